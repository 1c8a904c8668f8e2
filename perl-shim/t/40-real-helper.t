#!/usr/bin/perl -T
# The call sequences PVE makes (reference §1.6) against the REAL drbdpool
# binary: file backend, simulated DRBD, two nodes (pve1, pve2) with their
# agents running in the background. Set DRBDPOOL_BIN to the built helper:
#   DRBDPOOL_BIN=$PWD/target/debug/drbdpool prove -T -I perl-shim -I perl-shim/t/lib perl-shim/t
# Where the helper's exact behaviour was not known when this was written, the
# assertion is what an admin would expect (see t/README.md).

use strict;
use warnings;

use Test::More;
use File::Temp qw(tempdir);
use Cwd qw(realpath);
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);
use JSON::PP ();

BEGIN { $ENV{PATH} = '/usr/sbin:/usr/bin:/sbin:/bin'; delete @ENV{qw(IFS CDPATH ENV BASH_ENV)}; }

my $bin;
BEGIN {
    my $b = $ENV{DRBDPOOL_BIN} // '';
    if ($b eq '' || $b !~ m{^(/[\w./+-]+)$} || !-x $1) {
        require Test::More;
        Test::More::plan(skip_all => 'set DRBDPOOL_BIN to an absolute path of the built drbdpool helper'
            . ' (e.g. target/debug/drbdpool) to run the call sequences against it');
    }
    $bin = $1;
}

use PVE::Storage;

my $tmp = tempdir(CLEANUP => 1);
($tmp) = $tmp =~ m{^(/[\w./-]+)$};
my $store = "$tmp/store";
my $backing = "$tmp/backing";
mkdir($_) for $store, $backing, "$tmp/backing-pve1", "$tmp/backing-pve2", "$tmp/sim", "$tmp/mnt";

# Two nodes on one machine: each must see its own `drbdpool-dir` (on real
# nodes it is a local directory). Every helper process (plugin calls and the
# agent) runs in a private mount namespace with <tmp>/backing-<node> bound
# onto <tmp>/backing, as tests/multi_agent.rs does for the agents.
my ($unshare) = grep { -x $_ } qw(/usr/bin/unshare /bin/unshare);
plan(skip_all => 'needs root and unshare(1) to give each simulated node its own backing directory')
    if $> != 0 || !$unshare;
my $real_bin = $bin;
$bin = "$tmp/drbdpool-as-node";
open(my $wfh, '>', $bin) or die "write $bin: $!";
print $wfh <<"SH";
#!/bin/sh
# \$DRBDPOOL_NODE's view: its own backing directory, then the real helper.
exec $unshare --mount --propagation private -- sh -c 'mount --bind "\$1" "\$2" && shift 2 && exec "\$@"' \\
    sh "$tmp/backing-\$DRBDPOOL_NODE" "$backing" "$real_bin" "\$@"
SH
close($wfh);
chmod(0755, $bin) or die;
$ENV{DRBDPOOL_BIN} = $bin;

$ENV{DRBDPOOL_STORE} = $store;
$ENV{DRBDPOOL_DRBD} = 'sim';
$ENV{DRBDPOOL_SIM_DIR} = "$tmp/sim";
$ENV{DRBDPOOL_PEER_TIMEOUT_SECS} //= 40;
$ENV{DRBDPOOL_NODE} = 'pve1';
delete $ENV{PVE_MIGRATED_FROM};

sub run_bin {
    my (@args) = @_;
    my $pid = open(my $ph, '-|') // die "fork: $!";
    if (!$pid) {
        open(STDERR, '>&', \*STDOUT);
        exec($bin, @args) or POSIX::_exit(127);
    }
    my $out = do { local $/; <$ph> } // '';
    close($ph);
    return ($? >> 8, $out);
}

for ([pve1 => '127.0.0.1'], [pve2 => '127.0.0.2']) {
    my ($rc, $out) = run_bin('--store', $store, 'node', 'add', $_->[0], '--address', $_->[1]);
    is($rc, 0, "node add $_->[0] $_->[1]") or diag($out);
}

# Agents: started here, killed in END, by pid.
my %agent;
my (undef, $agent_help) = run_bin('agent', '--help');
my @interval = $agent_help =~ m/--interval/ ? ('--interval', '1') : ();
for my $node (qw(pve1 pve2)) {
    my $pid = fork() // die "fork: $!";
    if (!$pid) {
        open(STDOUT, '>', "$tmp/agent-$node.log");
        open(STDERR, '>&', \*STDOUT);
        $ENV{DRBDPOOL_NODE} = $node;
        exec($bin, '--store', $store, '--node', $node, 'agent', @interval) or POSIX::_exit(127);
    }
    $agent{$node} = $pid;
}
END {
    local $?; # keep the test's exit status
    for my $pid (values %agent) {
        kill('TERM', $pid);
    }
    my $until = time() + 5;
    for my $pid (values %agent) {
        while (waitpid($pid, WNOHANG) == 0) {
            if (time() > $until) { kill('KILL', $pid); waitpid($pid, 0); last }
            sleep(0.05);
        }
    }
}

sub agent_logs {
    my $s = '';
    for my $n (sort keys %agent) {
        open(my $fh, '<', "$tmp/agent-$n.log") or next;
        my @l = <$fh>;
        $s .= "--- agent $n (last lines)\n" . join('', @l[-(@l < 30 ? scalar(@l) : 30) .. -1]);
    }
    return $s;
}

PVE::Storage::set_config_text(<<"CFG");
drbdpool: dpool
	drbdpool-backend file
	drbdpool-dir $backing
	content images,rootdir
	drbdpool-replicas 2
	nodes pve1,pve2
CFG
my $cfg = PVE::Storage::config();
is($cfg->{ids}->{dpool}->{shared}, 1, 'storage is shared');

sub as_node {
    my ($node, $code) = @_;
    local $ENV{DRBDPOOL_NODE} = $node;
    return $code->();
}

sub lives {
    my ($name, $code) = @_;
    my @r = eval { $code->() };
    is($@, '', $name) or diag(agent_logs());
    return wantarray ? @r : $r[0];
}

my $MiB = 1024 * 1024;

# The simulated DRBD has no kernel devices: /dev/drbdN does not exist there.
# Device checks (exists, mkfs, mount, read) run when the path is a real device.
my $SIM = ($ENV{DRBDPOOL_DRBD} // '') eq 'sim';
sub device_or_skip {
    my ($path) = @_;
    return 1 if defined($path) && -e $path;
    return 0 if $SIM;
    fail('device ' . ($path // 'undef') . ' exists once active');
    return 0;
}

# --- pvestatd: status becomes active once the agents have published ---------------
subtest 'status (pvestatd)' => sub {
    my $info;
    my $until = time() + 15;
    while (time() < $until) {
        $info = as_node('pve1', sub { PVE::Storage::storage_info($cfg, 'images') });
        last if $info->{dpool}->{active};
        sleep(0.5);
    }
    ok($info->{dpool}->{active}, 'dpool active on pve1 after the agent published') or diag(agent_logs());
    ok($info->{dpool}->{total} > 0, "total $info->{dpool}->{total} bytes");
    ok($info->{dpool}->{avail} <= $info->{dpool}->{total}, 'avail <= total');
    my $t0 = time();
    as_node('pve2', sub { PVE::Storage::storage_info($cfg, 'images') });
    ok(time() - $t0 < 2, 'status answers fast');
};

# --- GUI VM create: vdisk_alloc, then start activates and builds the command line --------
my $vm = 'dpool:vm-100-disk-0';
subtest 'GUI VM create' => sub {
    my $volid = lives('vdisk_alloc 64 MiB on pve1', sub {
        as_node('pve1', sub { PVE::Storage::vdisk_alloc($cfg, 'dpool', 100, 'raw', undef, 64 * 1024) }) });
    is($volid, $vm, 'first disk of VM 100');
    my $info;
    my $until = time() + 15;
    while (time() < $until) {
        $info = as_node('pve1', sub { PVE::Storage::storage_info($cfg, 'images') });
        last if $info->{dpool}->{active};
        sleep(0.5);
    }
    ok($info->{dpool}->{active} && $info->{dpool}->{total} > 0, 'status active with a volume on it');
    my $list = lives('vdisk_list on pve2', sub { as_node('pve2', sub { PVE::Storage::vdisk_list($cfg, 'dpool', 100) }) });
    is_deeply([map { [$_->{volid}, $_->{size}, $_->{format}] } @{ $list->{dpool} }], [[$vm, 64 * $MiB, 'raw']],
        'listed on pve2 with its size in bytes');
    my $path_unactivated = lives('path on pve2 without activation', sub { as_node('pve2', sub { scalar(PVE::Storage::path($cfg, $vm)) }) }) // '';
    like($path_unactivated, qr{^/}, "pvesm path works on any node without activation: $path_unactivated");
    lives('activate_volumes on pve1', sub { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) });
    my $path = lives('path once active', sub { as_node('pve1', sub { scalar(PVE::Storage::path($cfg, $vm)) }) });
    is($path, $path_unactivated, 'same, stable path once active');
    SKIP: {
        skip "simulated DRBD: no $path", 1 if !device_or_skip($path);
        ok(-b $path, "block device $path exists once active");
    }
    my $bd = as_node('pve1', sub { PVE::Storage::qemu_blockdev_options($cfg, $vm, '10.0', {}) });
    is_deeply($bd, { driver => 'host_device', filename => $path }, 'blockdev options');
    is(scalar(PVE::Storage::volume_size_info($cfg, $vm, 3)), 64 * $MiB, 'volume_size_info (EFI/cloud-init path)');
    lives('stop: deactivate_volumes on pve1', sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
};

# --- GUI CT create: raw volume, activate, map, mkfs.ext4 -O mmp, mount, umount, deactivate --------
my $ct = 'dpool:vm-101-disk-0';
subtest 'GUI CT create' => sub {
    my $volid = lives('vdisk_alloc raw for CT 101', sub {
        as_node('pve1', sub { PVE::Storage::vdisk_alloc($cfg, 'dpool', 101, 'raw', undef, 64 * 1024) }) });
    is($volid, $ct, 'CT disks on block storage are vm-<ctid>-disk-N');
    lives('activate_volumes', sub { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$ct]) }) });
    my $dev = lives('map_volume', sub { as_node('pve1', sub { PVE::Storage::map_volume($cfg, $ct) }) });
    SKIP: {
        skip 'simulated DRBD: no device to format', 3 if !device_or_skip($dev);
        is(system('mkfs.ext4', '-q', '-F', '-O', 'mmp', '-E', 'root_owner=0:0', $dev), 0, "mkfs.ext4 -O mmp on $dev");
        my $real = realpath($dev) // '';
        skip 'mount needs root and a real block device', 2 if $> != 0 || !-b $real;
        is(system('mount', $real, "$tmp/mnt"), 0, 'mount (pct mount_all)');
        is(system('umount', "$tmp/mnt"), 0, 'umount');
    }
    lives('unmap_volume', sub { as_node('pve1', sub { PVE::Storage::unmap_volume($cfg, $ct) }) });
    lives('deactivate_volumes', sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$ct]) }) });
};

# --- start / stop, twice: idempotent ---------------------------------------------------------------
subtest 'start and stop' => sub {
    for my $round (1, 2) {
        lives("start $round: activate", sub {
            as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm], undef, { 'plugin-may-deactivate-volume' => 1 }) }) });
        lives("start $round: activate again (volume may already be active)", sub {
            as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) });
        lives("stop $round: deactivate", sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
    }
    lives('deactivating an inactive volume is fine', sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
};

# --- live migration pve1 -> pve2 -----------------------------------------------------------------------
subtest 'live migration' => sub {
    lives('VM runs on pve1', sub { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) });
    eval { as_node('pve2', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) };
    like($@, qr/pve1/, 'plain start on pve2 while Primary on pve1: refused, naming pve1');
    {
        local $ENV{PVE_MIGRATED_FROM} = 'pve1';
        lives('target pve2 activates with PVE_MIGRATED_FROM=pve1 while pve1 is Primary', sub {
            as_node('pve2', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) });
    }
    lives('source pve1 deactivates after the handover', sub {
        as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
    {
        local $ENV{PVE_MIGRATED_FROM} = 'pve2';
        eval { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) };
        is($@, '', 'migrating back: pve1 activates with PVE_MIGRATED_FROM=pve2');
    }
    lives('pve2 deactivates', sub { as_node('pve2', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
    lives('pve1 stops', sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
};

# --- HA: start on another node once the first released it -------------------------------------------------
subtest 'HA start on another node' => sub {
    lives('running on pve1', sub { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) });
    lives('pve1 released it', sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
    lives('LRM on pve2 starts it (activate_storage + activate_volume)', sub {
        as_node('pve2', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) });
    my $path = lives('path on pve2', sub { as_node('pve2', sub { scalar(PVE::Storage::path($cfg, $vm)) }) });
    SKIP: {
        skip 'simulated DRBD: no device', 1 if !device_or_skip($path);
        ok(-b $path, "device $path exists on pve2");
    }
    lives('stop on pve2', sub { as_node('pve2', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
};

# --- vzdump of a stopped VM: activate, path, volume_size_info(5 s), read, deactivate -------------------------
subtest 'backup-like read' => sub {
    lives('activate', sub { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) });
    my $path = lives('path', sub { as_node('pve1', sub { scalar(PVE::Storage::path($cfg, $vm)) }) });
    my $size = lives('volume_size_info', sub { as_node('pve1', sub { scalar(PVE::Storage::volume_size_info($cfg, $vm, 5)) }) });
    is($size, 64 * $MiB, 'size in bytes');
    SKIP: {
        skip 'simulated DRBD: no device to read', 1 if !device_or_skip($path);
        open(my $fh, '<', $path) or die "open $path: $!";
        my $n = sysread($fh, my $buf, 65536);
        is($n, 65536, 'device readable');
        close($fh);
    }
    lives('deactivate', sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
};

# --- resize (qm resize: bytes, grow only) ----------------------------------------------------------------------
subtest 'resize' => sub {
    lives('grow to 96 MiB', sub { as_node('pve1', sub { PVE::Storage::volume_resize($cfg, $vm, 96 * $MiB, 0) }) });
    is(scalar(PVE::Storage::volume_size_info($cfg, $vm, 5)), 96 * $MiB, 'new size reported');
    eval { as_node('pve1', sub { PVE::Storage::volume_resize($cfg, $vm, 32 * $MiB, 0) }) };
    like($@, qr/shrink/i, 'shrinking refused');
    is(scalar(PVE::Storage::volume_size_info($cfg, $vm, 5)), 96 * $MiB, 'size unchanged after the refusal');
};

# --- snapshots: vzdump snapshot mode of a CT, then a rollback of the stopped guest --------------------------------
subtest 'snapshot, snapshot device, rollback' => sub {
    my $has = as_node('pve1', sub { PVE::Storage::volume_has_feature($cfg, 'snapshot', $vm, undef, 0) });
    ok($has, 'file backend: snapshot feature');
    lives('volume_snapshot vzdump', sub { as_node('pve1', sub { PVE::Storage::volume_snapshot($cfg, $vm, 'vzdump') }) });
    my $info = lives('volume_snapshot_info', sub { as_node('pve1', sub { PVE::Storage::volume_snapshot_info($cfg, $vm) }) });
    ok($info && $info->{vzdump} && $info->{vzdump}->{timestamp} > 0, 'snapshot listed with a timestamp');
    lives('activate_volumes with snapname', sub {
        as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm], 'vzdump') }) });
    my $snapdev = lives('path of the snapshot', sub { as_node('pve1', sub { scalar(PVE::Storage::path($cfg, $vm, 'vzdump')) }) });
    my $dev = as_node('pve1', sub { scalar(eval { PVE::Storage::path($cfg, $vm) }) });
    isnt($snapdev // '', $dev // '', "snapshot device " . ($snapdev // 'undef') . " differs from the volume's");
    lives('deactivate the snapshot', sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$vm], 'vzdump') }) });
    my @blockers;
    lives('rollback possible', sub {
        as_node('pve1', sub { PVE::Storage::volume_rollback_is_possible($cfg, $vm, 'vzdump', \@blockers) }) });
    lives('rollback of the stopped guest', sub {
        as_node('pve1', sub { PVE::Storage::volume_snapshot_rollback($cfg, $vm, 'vzdump') }) });
    lives('volume_snapshot_delete', sub { as_node('pve1', sub { PVE::Storage::volume_snapshot_delete($cfg, $vm, 'vzdump', 0) }) });
    $info = as_node('pve1', sub { PVE::Storage::volume_snapshot_info($cfg, $vm) });
    ok(!exists($info->{vzdump}), 'snapshot gone');
    my $until = time() + 40;
    my $err;
    while (time() < $until) { # after a rollback the other replica resyncs fully before it can be used
        eval { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) };
        $err = $@;
        last if !$err;
        sleep(0.5);
    }
    is($err, '', 'volume can be activated again after the rollback');
    lives('deactivate', sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
};

# --- used: the thin allocation the agents measure, not the size (issue 16) ------------------------------------------
subtest 'used is the allocation' => sub {
    my $v = lives('vdisk_alloc 32 MiB for VM 120', sub {
        as_node('pve1', sub { PVE::Storage::vdisk_alloc($cfg, 'dpool', 120, 'raw', undef, 32 * 1024) }) });
    # The file backend's image on each node is sparse: write 4 MiB into pve1's, as a guest would.
    my $img = "$tmp/backing-pve1/dpool.vm-120-disk-0.img";
    # The alloc returned once the volume was recorded; its replicas are made after the call.
    my $made = time() + 20;
    sleep(0.2) while !-f $img && time() < $made;
    ok(-f $img, "pve1's backing image $img") or return;
    open(my $fh, '+<', $img) or die "open $img: $!";
    syswrite($fh, "\x5a" x (4 * $MiB)) == 4 * $MiB or die "write: $!";
    close($fh);
    my ($size, $used);
    my $until = time() + 25; # the agents measure every 10 s
    while (time() < $until) {
        (undef, undef, $used) = as_node('pve1', sub { PVE::Storage::volume_size_info($cfg, $v, 5) });
        last if $used >= 4 * $MiB && $used < 32 * $MiB;
        sleep(0.5);
    }
    ($size, undef, $used) = as_node('pve1', sub { PVE::Storage::volume_size_info($cfg, $v, 5) });
    is($size, 32 * $MiB, 'size: provisioned');
    ok($used >= 4 * $MiB && $used < 8 * $MiB, "used on pve1: the 4 MiB written (+ DRBD metadata), got $used")
        or diag(agent_logs());
    my $list = as_node('pve1', sub { PVE::Storage::vdisk_list($cfg, 'dpool', 120) });
    is($list->{dpool}->[0]->{used}, $used, 'list reports the same used');
    my $list2 = as_node('pve2', sub { PVE::Storage::vdisk_list($cfg, 'dpool', 120) });
    ok($list2->{dpool}->[0]->{used} < 4 * $MiB, 'pve2 reports its own replica (nothing written there)');
    lives('vdisk_free', sub { as_node('pve1', sub { PVE::Storage::vdisk_free($cfg, $v) }) });
};

# --- template and linked clone: the base cannot go while the clone exists (issue 16) ---------------------------------
# Also: the helper's routine INFO lines stay out of the task log (STDERR of the call).
sub stderr_of {
    my ($code) = @_;
    open(my $saved, '>&', \*STDERR) or die "dup: $!";
    open(STDERR, '>', "$tmp/stderr.txt") or die "redirect: $!";
    my @r = eval { $code->() };
    my $err = $@;
    open(STDERR, '>&', $saved) or die "restore: $!";
    open(my $fh, '<', "$tmp/stderr.txt") or die;
    my $out = do { local $/; <$fh> } // '';
    close($fh);
    return ($out, $err, @r);
}
subtest 'template, linked clone, base in use' => sub {
    my ($log, $err, $volid) = stderr_of(sub {
        as_node('pve1', sub { PVE::Storage::vdisk_alloc($cfg, 'dpool', 110, 'raw', undef, 16 * 1024) }) });
    is($err, '', 'vdisk_alloc for VM 110') or diag(agent_logs());
    is($volid, 'dpool:vm-110-disk-0', '... its first disk');
    unlike($log, qr/\bINFO\b|allocated dpool:/, "no routine INFO lines in the task log of an alloc (got: '$log')");
    my $base = lives('vdisk_create_base', sub { as_node('pve1', sub { PVE::Storage::vdisk_create_base($cfg, $volid) }) });
    is($base, 'dpool:base-110-disk-0', 'template');
    # Right after the alloc pve2's agent may not have published its replica UpToDate yet.
    my ($clone, $cerr);
    my $until = time() + 20;
    while (1) {
        $clone = eval { as_node('pve1', sub { PVE::Storage::vdisk_clone($cfg, $base, 111) }) };
        $cerr = $@;
        last if !$cerr || $cerr !~ m/not identical on all its replicas/ || time() > $until;
        sleep(0.5);
    }
    is($cerr, '', 'vdisk_clone for VM 111') or diag(agent_logs());
    is($clone, 'dpool:base-110-disk-0/vm-111-disk-0', 'linked clone named <base>/<name>');
    my $list = as_node('pve2', sub { PVE::Storage::vdisk_list($cfg, 'dpool', 111) });
    is_deeply([map { $_->{volid} } @{ $list->{dpool} }], [$clone], 'listed under that name');
    is(PVE::Storage::volume_is_base_and_used($cfg, $base), 1, 'volume_is_base_and_used sees the clone');
    eval { as_node('pve1', sub { PVE::Storage::vdisk_free($cfg, $base) }) };
    like($@, qr/base volume 'base-110-disk-0' is still in use by linked clones/, 'vdisk_free of the base: refused by PVE');
    my $P = 'PVE::Storage::Custom::DRBDPoolPlugin';
    eval { as_node('pve1', sub { $P->free_image('dpool', $cfg->{ids}->{dpool}, 'base-110-disk-0', 1, 'raw') }) };
    like($@, qr/refused.*still in use by linked clones \(dpool:base-110-disk-0\/vm-111-disk-0\)/,
        'free_image of the base straight to the helper: refused there too');
    is(scalar(PVE::Storage::volume_size_info($cfg, $base, 5)), 16 * $MiB, 'the base is still there');
    lives('vdisk_free of the clone', sub { as_node('pve1', sub { PVE::Storage::vdisk_free($cfg, $clone) }) });
    lives('then vdisk_free of the base', sub { as_node('pve1', sub { PVE::Storage::vdisk_free($cfg, $base) }) });
    $list = as_node('pve2', sub { PVE::Storage::vdisk_list($cfg, 'dpool', 110) });
    is_deeply($list->{dpool}, [], 'both gone');
};

# --- resync speed: pvesm set drbdpool-resync-rate-max/-min reaches every replica (issue 16) ---------------------------
subtest 'resync properties reach the replicas' => sub {
    PVE::Storage::set_config_text(<<"CFG");
drbdpool: dpool
	drbdpool-backend file
	drbdpool-dir $backing
	content images,rootdir
	drbdpool-replicas 2
	nodes pve1,pve2
	drbdpool-resync-rate-max 110M
	drbdpool-resync-rate-min 20M
CFG
    $cfg = PVE::Storage::config();
    # pvestatd's storage_info runs activate_storage, which records them for the agents.
    as_node('pve2', sub { PVE::Storage::storage_info($cfg, 'images') });
    my $want = { max_kib => 110 * 1024, min_kib => 20 * 1024 };
    my %got;
    my $until = time() + 15;
    while (time() < $until) {
        for my $n (qw(pve1 pve2)) {
            open(my $fh, '<', "$tmp/sim/$n/dpool.vm-100-disk-0.json") or next;
            my $r = eval { JSON::PP::decode_json(do { local $/; <$fh> }) };
            $got{$n} = $r->{resync} if $r;
        }
        last if grep({ ($got{$_}->{max_kib} // 0) == $want->{max_kib} } qw(pve1 pve2)) == 2;
        sleep(0.5);
    }
    is_deeply($got{$_}, $want, "$_ applied max 110M, min 20M to vm-100-disk-0") for qw(pve1 pve2);
};

# --- a wait that lasts shows progress in the task log, while it lasts (issue 16) -----------------------------------------
subtest 'progress of a long wait' => sub {
    kill('STOP', $agent{pve2}); # pve2's agent does not answer: its replica is not made
    my ($log, $err, $v);
    {
        local $ENV{DRBDPOOL_PEER_TIMEOUT_SECS} = 5;
        my $t0 = time();
        ($log, $err, $v) = stderr_of(sub {
            as_node('pve1', sub { PVE::Storage::vdisk_alloc($cfg, 'dpool', 130, 'raw', undef, 16 * 1024) }) });
        is($err, '', 'the alloc does not wait for pve2 inside the storage lock');
        ok(time() - $t0 < 4, sprintf('... it returned in %.1f s', time() - $t0));
        # The guest is started at once: activation waits for the replicas, and says so.
        ($log, $err) = stderr_of(sub { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$v]) }) });
    }
    kill('CONT', $agent{pve2});
    like($err, qr/vm-130-disk-0 is still being created/, 'activation gave up after 5 s: still being created');
    like($log, qr/^drbdpool: still waiting for dpool:vm-130-disk-0 to be created on pve2 \(\d+s so far, at most \d+s more\)$/m,
        'the task log showed the wait');
    unlike($log, qr/\bINFO\b/, '... and no routine INFO lines');
    # pve2's agent is back: the creation finishes in the background, the next start works.
    lives('activate once pve2 is back', sub { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$v]) }) });
    lives('deactivate', sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$v]) }) });
    lives('vdisk_free', sub { as_node('pve1', sub { PVE::Storage::vdisk_free($cfg, $v) }) });
};

# --- destroy: refused while active, then gone ----------------------------------------------------------------------
subtest 'destroy' => sub {
    lives('activate on pve1', sub { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) });
    eval { as_node('pve2', sub { PVE::Storage::vdisk_free($cfg, $vm) }) };
    like($@, qr/in use|Primary|active/i, 'vdisk_free refused while the volume is active on pve1');
    lives('deactivate', sub { as_node('pve1', sub { PVE::Storage::deactivate_volumes($cfg, [$vm]) }) });
    lives('vdisk_free', sub { as_node('pve1', sub { PVE::Storage::vdisk_free($cfg, $vm) }) });
    lives('vdisk_free of the CT disk', sub { as_node('pve1', sub { PVE::Storage::vdisk_free($cfg, $ct) }) });
    my $list = lives('vdisk_list', sub { as_node('pve2', sub { PVE::Storage::vdisk_list($cfg, 'dpool') }) });
    is_deeply($list->{dpool}, [], 'no volumes left');
    eval { as_node('pve1', sub { PVE::Storage::activate_volumes($cfg, [$vm]) }) };
    like($@, qr/not-found|does not exist/, 'activating a freed volume: not found');
};

diag(agent_logs()) if !Test::More->builder->is_passing;
done_testing();
