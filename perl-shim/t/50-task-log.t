#!/usr/bin/perl -T
# Task logs stay clean (issue 16): of the helper's stderr, a successful call copies
# only its WARN/ERROR lines and plain (non-log) lines to STDERR, which PVE puts in
# the task log of every pvesm/qm/GUI task. Routine INFO/DEBUG lines are dropped.

use strict;
use warnings;

use Test::More;

BEGIN { $ENV{PATH} = '/usr/bin:/bin'; delete @ENV{qw(IFS CDPATH ENV BASH_ENV)}; }

use PVE::Storage;
use DrbdPoolTest qw(fake_setup set_reply);

my $P = 'PVE::Storage::Custom::DRBDPoolPlugin';
my $dir = fake_setup();
$ENV{DRBDPOOL_NODE} = 'pve1';
delete $ENV{DRBDPOOL_TASK_LOG};
my $scfg = { type => 'drbdpool', vgname => 'ssd', thinpool => 'data' };

# What a call prints on STDERR (captured through a temp file, as PVE's task log does).
sub stderr_of {
    my ($code) = @_;
    open(my $saved, '>&', \*STDERR) or die "dup: $!";
    my $file = "$dir/stderr.txt";
    open(STDERR, '>', $file) or die "redirect: $!";
    my @r = eval { $code->() };
    my $err = $@;
    open(STDERR, '>&', $saved) or die "restore: $!";
    open(my $fh, '<', $file) or die;
    local $/;
    my $out = <$fh> // '';
    close($fh);
    die $err if $err;
    return $out;
}

my $helper_stderr = join('',
    "2026-12-02T18:46:55.123456Z  INFO allocated dp:vm-100-disk-0 as dp-vm-100-disk-0 (minor 1000, port 7000) on pve1, pve2\n",
    "2026-12-02T18:46:55.223456Z  INFO alloc: local replica up resource=dp-vm-100-disk-0 ms=12\n",
    "2026-12-02T18:46:55.323456Z DEBUG initial-sync skip not possible yet; retrying\n",
    "2026-12-02T18:46:56.000001Z  WARN dp:vm-100-disk-0 stays marked for deletion until the agents on pve2 have removed their replicas\n",
    "2026-12-02T18:46:56.000002Z ERROR could not remove the local replica of dp-vm-100-disk-0: busy (the agent retries)\n",
    "resync of dp-vm-100-disk-0: 42% at 95 MB/s, ETA 12 s\n",
);
set_reply($dir, 'free', { ok => JSON::PP::true, result => {}, stderr => $helper_stderr });

my $got = stderr_of(sub { $P->free_image('dpool', $scfg, 'vm-100-disk-0', 0) });
unlike($got, qr/INFO|allocated dp:|local replica up/, 'routine INFO lines are not in the task log');
unlike($got, qr/DEBUG|initial-sync skip/, 'DEBUG lines are not in the task log');
is($got, join('',
    "drbdpool warning: dp:vm-100-disk-0 stays marked for deletion until the agents on pve2 have removed their replicas\n",
    "drbdpool error: could not remove the local replica of dp-vm-100-disk-0: busy (the agent retries)\n",
    "resync of dp-vm-100-disk-0: 42% at 95 MB/s, ETA 12 s\n",
), 'warnings, errors and plain progress lines are, without timestamps');

{
    local $ENV{DRBDPOOL_TASK_LOG} = 'all';
    is(stderr_of(sub { $P->free_image('dpool', $scfg, 'vm-100-disk-0', 0) }), $helper_stderr,
        'DRBDPOOL_TASK_LOG=all passes everything through (debugging)');
}

# Only INFO: nothing at all in the task log.
set_reply($dir, 'free', { ok => JSON::PP::true, result => {}, stderr => (split(/^/m, $helper_stderr))[0] });
is(stderr_of(sub { $P->free_image('dpool', $scfg, 'vm-100-disk-0', 0) }), '', 'a call with only INFO lines prints nothing');

# A failing call still quotes the helper's last lines in its error (diagnostics).
set_reply($dir, 'path', { action => 'exit', exit => 7, stderr => $helper_stderr });
my $failed;
$got = stderr_of(sub { eval { $P->path($scfg, 'vm-100-disk-0', 'dpool') }; $failed = $@; });
like($failed, qr/helper said: .*ETA 12 s/, 'a failed call still names what the helper said');
like($got, qr/^drbdpool warning: .*\ndrbdpool error: .*\nresync of .*\n\z/, '... and its task log has the same filtered lines');

# Streamed as it comes: a long wait's progress is in the task log while the call still runs,
# and stays there when the call then fails (here: killed at its timeout).
set_reply($dir, 'size', { action => 'sleep', seconds => 5,
    stderr_first => "2026-12-02T18:46:55.1Z  INFO waiting up to 45s for x on pve2\n"
        . "drbdpool: still waiting for the replica of dp:vm-100-disk-0 to be ready on pve2 (3s so far, at most 42s more)\n" });
my $err;
$got = stderr_of(sub { eval { $P->volume_size_info($scfg, 'dpool', 'vm-100-disk-0', 1) }; $err = $@; });
like($err, qr/timed out after 1s/, 'the call timed out');
is($got, "drbdpool: still waiting for the replica of dp:vm-100-disk-0 to be ready on pve2 (3s so far, at most 42s more)\n",
    '... its progress line reached the task log before that, its INFO line did not');

done_testing();
