#!/usr/bin/perl -T
# The lab's driver for PVE calls, /root/pve.pl in every guest (it travels with
# the project's files in the guests' second cpio): what PVE does, in PVE's own
# order, through the real plugin class (perl -T like pvedaemon), on the
# storage.cfg entry {type drbdpool, vgname ssd, thinpool data, content
# images,rootdir}. One JSON line out: the call's result and its duration; a
# refusal dies with the plugin's message (exit code non-zero).
#
#   perl -T /root/pve.pl alloc VMID KIB [NAME] | activate VOL | deactivate VOL | path VOL
#                        | resize VOL BYTES [RUNNING] | size VOL | free VOL | base VOL
#                        | parallel N alloc VMID0 KIB | parallel N clone BASE VMID0 | parallel N floor VMID0 KIB
#
# `parallel` is PVE's bulk case (ten VMs created or cloned at once): N children forked from this
# one process (as pvedaemon forks a worker per API call from its preloaded modules), each through
# PVE's storage lock as vdisk_alloc and vdisk_clone take it for shared storage:
# PVE::Cluster::cfs_lock_storage, the real code, loaded from the file in DP_CFS_LOCK_PL (the lab
# extracts it from pve-cluster's PVE/Cluster.pm: 10 s to get the lock, "got lock request timeout",
# 60 s to run), on the guests' shared /etc/pve/priv/lock. `floor` is LvmThinPlugin's alloc_image
# under the same lock: one `lvcreate -V` of a thin LV. One JSON line: per call ok/error, the
# seconds spent waiting for the lock and holding it.
use strict;
use warnings;
use lib '/opt/perl-shim', '/opt/perl-shim/t/lib';
BEGIN { $ENV{PATH} = '/usr/sbin:/usr/bin:/sbin:/bin'; delete @ENV{qw(IFS CDPATH ENV BASH_ENV)}; }
use JSON::PP;
use Time::HiRes qw(time);
use POSIX ();
use PVE::Storage;
use PVE::Storage::Custom::DRBDPoolPlugin;

my $P = 'PVE::Storage::Custom::DRBDPoolPlugin';
my $storeid = 'dp';
my $scfg = { type => 'drbdpool', vgname => 'ssd', thinpool => 'data',
             content => { images => 1, rootdir => 1 }, shared => 1 };
# DP_REPLICAS=N: the storage's drbdpool-replicas (three-node scenarios); untainted, as PVE's parser would.
if (defined($ENV{DP_REPLICAS})) {
    $ENV{DP_REPLICAS} =~ /^(\d+)$/ or die "DP_REPLICAS must be a number\n";
    $scfg->{'drbdpool-replicas'} = $1;
}
my ($m, @a) = @ARGV;
$m //= '';
my $t0 = time;
my $r = {};
if ($m eq 'alloc') {            # pct create: vdisk_alloc -> activate_storage + alloc_image
    $P->activate_storage($storeid, $scfg, {});
    $r->{volname} = $P->alloc_image($storeid, $scfg, $a[0], 'raw', $a[2], $a[1]);
} elsif ($m eq 'activate') {    # pct start / HA recovery: activate_volumes -> activate_storage + activate_volume
    $P->activate_storage($storeid, $scfg, {});
    $P->activate_volume($storeid, $scfg, $a[0], undef, {});
    ($r->{path}) = $P->path($scfg, $a[0], $storeid);
} elsif ($m eq 'deactivate') {
    $P->deactivate_volume($storeid, $scfg, $a[0], undef, {});
} elsif ($m eq 'path') {
    ($r->{path}) = $P->path($scfg, $a[0], $storeid);
} elsif ($m eq 'resize') {      # pct resize: volume_resize(scfg, storeid, volname, bytes, running)
    $P->volume_resize($scfg, $storeid, $a[0], $a[1], $a[2] // 0);
} elsif ($m eq 'size') {
    $r->{size} = 0 + $P->volume_size_info($scfg, $storeid, $a[0], 5);
} elsif ($m eq 'free') {
    $P->free_image($storeid, $scfg, $a[0], 0, 'raw');
} elsif ($m eq 'base') {       # qm template: vdisk_create_base -> create_base under the storage lock
    $r->{volname} = $P->create_base($storeid, $scfg, $a[0]);
} elsif ($m eq 'parallel') {
    $r->{calls} = parallel(@a);
} else {
    die "usage: pve.pl alloc VMID KIB [NAME] | activate VOL | deactivate VOL | path VOL | resize VOL BYTES | size VOL"
        . " | free VOL | base VOL | parallel N alloc|clone|floor ...\n";
}
$r->{seconds} = 0 + sprintf('%.2f', time - $t0);
print JSON::PP->new->canonical->encode($r), "\n";

# The calls of `parallel`: (n, what, args...) -> [{i, ok, error, wait, hold, volname}] in call order.
sub parallel {
    my ($n, $what, @args) = @_;
    ($n) = ($n // '') =~ /^(\d+)$/ or die "parallel: N must be a number\n";
    my ($file) = ($ENV{DP_CFS_LOCK_PL} // '') =~ m{^(/[\w./-]+)$}
        or die "parallel needs DP_CFS_LOCK_PL: the real cfs_lock code extracted from pve-cluster's PVE/Cluster.pm\n";
    require $file;
    my ($arg0, $arg1) = map { (defined($_) && /^([\w.\/-]+)$/) ? $1 : die "parallel: bad argument\n" } @args[0, 1];
    my $work = {
        alloc => sub { $P->alloc_image($storeid, $scfg, $arg0 + $_[0], 'raw', undef, $arg1) },
        clone => sub { $P->clone_image($scfg, $storeid, $arg0, $arg1 + $_[0], undef) },
        floor => sub {
            my $name = 'floor-' . ($arg0 + $_[0]);
            # LvmThinPlugin::alloc_image: lvcreate -aly -V <size>k --name <name> --thinpool <vg>/<pool>
            system('lvcreate', '-q', '-aly', '-V', "${arg1}k", '--name', $name, '--thinpool', 'ssd/data') == 0
                or die "lvcreate $name failed\n";
            $name;
        },
    }->{$what} or die "parallel: alloc, clone or floor, not '$what'\n";
    $P->activate_storage($storeid, $scfg, {});
    my %pid;
    for my $i (0 .. $n - 1) {
        my $pid = fork() // die "fork: $!\n";
        if (!$pid) {
            my $res = { i => $i, ok => 0 };
            my ($called, $in, $out) = (time, undef, undef);
            my $v = DPLab::Cfs::cfs_lock_storage($storeid, undef, sub {
                $in = time;
                my $x = eval { $work->($i) };
                $out = time;
                die $@ if $@;
                return $x;
            });
            if (my $err = $@) { chomp($res->{error} = "$err"); } else { $res->{ok} = 1; $res->{volname} = $v; }
            $res->{wait} = 0 + sprintf('%.3f', ($in // time) - $called);
            $res->{hold} = defined($out) ? 0 + sprintf('%.3f', $out - $in) : undef;
            open(my $fh, '>', "/tmp/pve-parallel-$i.json") or die "$!\n";
            print $fh JSON::PP->new->canonical->encode($res);
            close($fh);
            POSIX::_exit(0);
        }
        $pid{$pid} = $i;
    }
    waitpid($_, 0) for keys %pid;
    my @out;
    for my $i (0 .. $n - 1) {
        open(my $fh, '<', "/tmp/pve-parallel-$i.json") or do { push @out, { i => $i, ok => 0, error => 'the child wrote nothing' }; next };
        local $/;
        push @out, JSON::PP->new->decode(<$fh>);
        unlink("/tmp/pve-parallel-$i.json");
    }
    return \@out;
}
