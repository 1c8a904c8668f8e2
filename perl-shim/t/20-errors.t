#!/usr/bin/perl -T
# Every way a helper call can go wrong gives a clear die message, and bad
# input is refused before anything runs.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time);
use Scalar::Util ();
use POSIX ();

BEGIN { $ENV{PATH} = '/usr/bin:/bin'; delete @ENV{qw(IFS CDPATH ENV BASH_ENV)}; }

use PVE::Storage;
use DrbdPoolTest qw(fake_setup set_reply calls clear_calls);

my $P = 'PVE::Storage::Custom::DRBDPoolPlugin';
my $dir = fake_setup();
$ENV{DRBDPOOL_NODE} = 'pve1';
my $scfg = { type => 'drbdpool', vgname => 'ssd', thinpool => 'data' };

sub no_call {
    my ($name, $code, $re) = @_;
    clear_calls($dir);
    eval { $code->() };
    like($@, $re, "$name: refused");
    is(scalar(@{ calls($dir) }), 0, "$name: helper never ran");
}

# --- malformed input, refused before exec -------------------------------------------
no_call('volname with ..', sub { $P->activate_volume('dpool', $scfg, 'vm-100-disk-0/../../etc') },
    qr/invalid volume name/);
no_call('volname with shell', sub { $P->path($scfg, 'vm-100-disk-0;reboot', 'dpool') },
    qr/invalid volume name/);
no_call('volname not ours', sub { $P->free_image('dpool', $scfg, 'subvol-100-disk-0', 0) },
    qr/invalid volume name/);
no_call('parse_volname garbage', sub { $P->parse_volname('100/vm-100-disk-0.qcow2') },
    qr/unable to parse drbdpool volume name/);
no_call('empty volname', sub { $P->deactivate_volume('dpool', $scfg, '') }, qr/missing volume name/);
no_call('alloc name for other vm', sub { $P->alloc_image('dpool', $scfg, 100, 'raw', 'vm-101-disk-0', 1024) },
    qr/should be 'vm-100-\*'/);
no_call('alloc qcow2', sub { $P->alloc_image('dpool', $scfg, 100, 'qcow2', undef, 1024) },
    qr/unsupported format 'qcow2'/);
no_call('alloc size text', sub { $P->alloc_image('dpool', $scfg, 100, 'raw', undef, '4G') },
    qr/size \(KiB\) must be a non-negative integer/);
no_call('alloc size 0', sub { $P->alloc_image('dpool', $scfg, 100, 'raw', undef, 0) }, qr/at least 1 KiB/);
no_call('alloc vmid 0', sub { $P->alloc_image('dpool', $scfg, 0, 'raw', undef, 1024) }, qr/invalid VMID/);
no_call('snapshot name', sub { $P->volume_snapshot($scfg, 'dpool', 'vm-100-disk-0', '../x') },
    qr/invalid snapshot name/);
no_call('missing snapshot', sub { $P->volume_snapshot($scfg, 'dpool', 'vm-100-disk-0', undef) },
    qr/missing snapshot name/);
no_call('resize bytes text', sub { $P->volume_resize($scfg, 'dpool', 'vm-100-disk-0', '1G', 0) },
    qr/non-negative integer/);
{
    local $ENV{DRBDPOOL_BIN} = 'drbdpool';
    no_call('relative DRBDPOOL_BIN', sub { $P->status('dpool', $scfg, {}) }, qr/not an absolute path/);
}

# --- the helper says no --------------------------------------------------------------------
set_reply($dir, 'activate', { ok => JSON::PP::false, error => {
    kind => 'not-found', message => "volume 'vm-100-disk-9' does not exist in storage 'dpool'" } });
eval { $P->activate_volume('dpool', $scfg, 'vm-100-disk-9') };
is($@, "drbdpool: activate failed (not-found): volume 'vm-100-disk-9' does not exist in storage 'dpool'\n",
    'error reply: method, kind and the helper message');
set_reply($dir, 'activate', { ok => JSON::PP::false, exit => 4, error => {
    kind => 'refused', message => "replica on pve1 is Outdated; UpToDate data is on pve2" } });
eval { $P->activate_volume('dpool', $scfg, 'vm-100-disk-0') };
like($@, qr/^drbdpool: activate failed \(refused\): replica on pve1 is Outdated; UpToDate data is on pve2$/,
    'error reply with a kind-specific exit code');
set_reply($dir, 'activate', undef);

# --- helper missing -----------------------------------------------------------------------------
{
    local $ENV{DRBDPOOL_BIN} = "$dir/nope/drbdpool";
    eval { $P->status('dpool', $scfg, {}) };
    like($@, qr{helper '\Q$dir\E/nope/drbdpool' not found or not executable on node 'pve1' \(install drbdpool on every node, or set DRBDPOOL_BIN\)},
        'missing helper: names the path, the node and the fix');
}

# --- helper timing out ---------------------------------------------------------------------------
set_reply($dir, 'status', { action => 'sleep', seconds => 30 });
my $t0 = time();
eval { $P->status('dpool', $scfg, {}) };
my $took = time() - $t0;
like($@, qr/drbdpool helper '.*plugin status' timed out after 5s and was killed on node 'pve1'; check 'drbdpool status'/,
    'status timeout message');
ok($took >= 4.9 && $took < 8, sprintf('status killed after its 5 s budget (took %.1f s)', $took));
my $stuck = `ps -eo args`;
unlike($stuck, qr/\Q$dir\E\/drbdpool plugin status/, 'no helper process left behind');
set_reply($dir, 'status', undef);

set_reply($dir, 'size', { action => 'sleep', seconds => 30 });
$t0 = time();
eval { $P->volume_size_info($scfg, 'dpool', 'vm-100-disk-0', 1) };
$took = time() - $t0;
like($@, qr/timed out after 1s/, 'volume_size_info honours the caller timeout');
ok($took < 3, sprintf('... and returns within it (%.1f s)', $took));
set_reply($dir, 'size', undef);

# a helper whose child keeps stdout open must not hang us either (process group kill)
open(my $fh, '>', "$dir/forker") or die;
print $fh "#!/bin/sh\n(sleep 30) &\necho \$! > $dir/forker.pid\nsleep 30\n";
close($fh);
chmod(0755, "$dir/forker");
{
    local $ENV{DRBDPOOL_BIN} = "$dir/forker";
    $t0 = time();
    eval { $P->status("dpool", $scfg, {}) };
    $took = time() - $t0;
    like($@, qr/timed out after 5s/, 'helper with a background child times out');
    ok($took < 8, sprintf('... within budget (%.1f s)', $took));
    sleep(1);
    open(my $pf, '<', "$dir/forker.pid") or die "no pid file: $!";
    my ($bg) = <$pf> =~ m/^(\d+)/;
    close($pf);
    # dead = gone or a zombie waiting for whoever inherited it
    my $alive = sub {
        open(my $st, '<', "/proc/$bg/stat") or return 0;
        my ($state) = (<$st> // '') =~ m/\)\s+(\S)/;
        return ($state // 'Z') ne 'Z';
    };
    my $until = time() + 3;
    sleep(0.1) while $alive->() && time() < $until;
    ok($bg && !$alive->(), "the helper's background child ($bg) was killed with its process group");
}

# --- garbage, silence, inconsistent exit ----------------------------------------------------------
set_reply($dir, 'path', { action => 'garbage' });
eval { $P->path($scfg, 'vm-100-disk-0', 'dpool') };
like($@, qr/plugin path' returned garbage instead of a JSON reply \(exit code 0\): 'this is not json\?'; check that the installed drbdpool matches this plugin \(protocol 1\)/,
    'garbage output');
set_reply($dir, 'path', { action => 'raw', stdout => '{"version":1}' });
eval { $P->path($scfg, 'vm-100-disk-0', 'dpool') };
like($@, qr/returned garbage instead of a JSON reply/, 'JSON without ok field is garbage too');
set_reply($dir, 'path', { action => 'exit', exit => 101, stderr => "thread 'main' panicked at src/main.rs:3\n" });
eval { $P->path($scfg, 'vm-100-disk-0', 'dpool') };
like($@, qr/plugin path' exited with code 101 without a reply on node 'pve1'.*helper said: thread 'main' panicked/,
    'non-zero exit without reply, with the helper stderr');
set_reply($dir, 'path', { action => 'raw', stdout => '{"version":1,"ok":true,"result":{"path":"/dev/drbd1"}}', exit => 3 });
eval { $P->path($scfg, 'vm-100-disk-0', 'dpool') };
like($@, qr/reported success but exited with code 3/, 'ok reply with non-zero exit is not trusted');
set_reply($dir, 'path', { ok => JSON::PP::true, result => {} });
eval { $P->path($scfg, 'vm-100-disk-0', 'dpool') };
like($@, qr/invalid device path for path/, 'reply without a path');
set_reply($dir, 'alloc', { ok => JSON::PP::true, result => { volname => '../../etc/passwd' } });
eval { $P->alloc_image('dpool', $scfg, 100, 'raw', undef, 1024) };
like($@, qr/invalid volume name '\.\.\/\.\.\/etc\/passwd'/, 'a bad volname from the helper is refused');
set_reply($dir, 'alloc', { ok => JSON::PP::true, result => { volname => 'vm-100-disk-3' } });
eval { $P->alloc_image('dpool', $scfg, 100, 'raw', 'vm-100-disk-1', 1024) };
like($@, qr/allocated 'vm-100-disk-3' but 'vm-100-disk-1' was asked for/, 'helper renaming a named alloc is caught');
set_reply($dir, 'alloc', undef);
set_reply($dir, 'path', undef);

# a helper that does not read its stdin and exits at once must not kill us with SIGPIPE
open($fh, '>', "$dir/deaf") or die;
print $fh "#!/bin/sh\necho '{\"version\":1,\"ok\":false,\"error\":{\"kind\":\"invalid-input\",\"message\":\"deaf\"}}'\nexit 2\n";
close($fh);
chmod(0755, "$dir/deaf");
{
    local $ENV{DRBDPOOL_BIN} = "$dir/deaf";
    my $big = { map { ("k$_" => 'x' x 1000) } 1 .. 200 }; # request > pipe buffer
    eval { $P->status('dpool', { %$scfg, %$big }, {}) };
    is($@, "drbdpool: status failed (invalid-input): deaf\n", 'helper that ignores stdin: its reply still counts');
}

# a daemon's SIGCHLD handler may reap the helper before we do: the reply still counts
{
    local $SIG{CHLD} = sub { 1 while waitpid(-1, POSIX::WNOHANG()) > 0 };
    my @st = eval { $P->status('dpool', $scfg, {}) };
    is($@, '', 'helper reaped by a SIGCHLD handler: no error');
    is($st[0], 1073741824, '... and the reply is used');
    set_reply($dir, 'path', { ok => JSON::PP::false, error => { kind => 'not-found', message => 'gone' } });
    eval { $P->path($scfg, 'vm-100-disk-0', 'dpool') };
    is($@, "drbdpool: path failed (not-found): gone\n", '... error replies too');
    set_reply($dir, 'path', undef);
}

# pvedaemon runs under -T: a tainted PATH must not stop the exec
{
    open(my $self, '<', __FILE__) or die;
    my $t = substr(scalar(<$self>), 0, 0); # file input is tainted
    close($self);
    local $ENV{PATH} = '/usr/bin:/bin' . $t;
    ok(Scalar::Util::tainted($ENV{PATH}), 'PATH is tainted for this call');
    my @st = eval { $P->status('dpool', $scfg, {}) };
    is($@, '', 'helper still runs (the child gets a clean PATH)');
    is($st[0], 1073741824, '... and answers');
}

done_testing();
