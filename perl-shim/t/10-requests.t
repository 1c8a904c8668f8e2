#!/usr/bin/perl -T
# Every plugin method against a fake helper: argv, request JSON shape, units,
# and that what comes back is untainted and shaped the way PVE expects.

use strict;
use warnings;

use Test::More;
use Scalar::Util qw(tainted);

BEGIN { $ENV{PATH} = '/usr/bin:/bin'; delete @ENV{qw(IFS CDPATH ENV BASH_ENV)}; }

use PVE::Storage;
use DrbdPoolTest qw(fake_setup set_reply calls last_call clear_calls);

my $P = 'PVE::Storage::Custom::DRBDPoolPlugin';
my $dir = fake_setup();
$ENV{DRBDPOOL_NODE} = 'pve1';
$ENV{DRBDPOOL_STORE} = "$dir/store";
delete $ENV{PVE_MIGRATED_FROM};

PVE::Storage::set_config_text(<<'CFG');
drbdpool: dpool
	vgname ssd
	thinpool data
	nodes pve1,pve2
	content images,rootdir
	drbdpool-replicas 2
CFG
my $cfg = PVE::Storage::config();
my $scfg = $cfg->{ids}->{dpool};

# Run $code, return the one helper call it made (for PVE::Storage wrappers,
# which also activate the storage first: the one call of $method).
sub one_call {
    my ($name, $code, $method) = @_;
    clear_calls($dir);
    my @ret = $code->();
    my $c = calls($dir);
    $c = [grep { $_->{argv}->[1] eq $method } @$c] if $method;
    is(scalar(@$c), 1, "$name: exactly one helper call") or diag explain $c;
    return ($c->[0] // {}, @ret);
}

sub taint_free {
    my ($v) = @_;
    if (ref($v) eq 'HASH') { return !grep { !taint_free($_) } values %$v }
    if (ref($v) eq 'ARRAY') { return !grep { !taint_free($_) } @$v }
    return !tainted($v);
}

# --- common envelope ---------------------------------------------------------------
my ($c, @r) = one_call('alloc', sub { $P->alloc_image('dpool', $scfg, 100, 'raw', undef, 4194304) });
is_deeply($c->{argv}, ['plugin', 'alloc'], 'argv: plugin alloc');
my $req = $c->{request};
is($req->{version}, 1, 'request version 1');
is($req->{storeid}, 'dpool', 'storeid');
is($req->{node}, 'pve1', 'node from PVE::INotify::nodename');
is_deeply($req->{scfg}, {
    type => 'drbdpool', vgname => 'ssd', thinpool => 'data', nodes => 'pve1,pve2',
    content => 'images,rootdir', 'drbdpool-replicas' => 2, shared => 1,
}, 'scfg: storage.cfg properties, content/nodes as comma lists');
is_deeply($req->{args}, { vmid => 100, fmt => 'raw', name => undef, size_kib => 4194304 },
    'alloc_image args: size in KiB, vmid a number, name null');
is($r[0], 'vm-100-disk-0', 'alloc_image returns the helper volname');
ok(!tainted($r[0]), 'alloc_image result untainted');
is($c->{env}->{DRBDPOOL_STORE}, "$dir/store", 'environment passed through to the helper');
my $raw_json = do { open(my $fh, '<', "$dir/calls.jsonl"); local $/; <$fh> };
like($raw_json, qr/"vmid":100\b/, 'vmid sent as a JSON number');

# named alloc, name must match vmid
($c, @r) = one_call('alloc_image named', sub { $P->alloc_image('dpool', $scfg, 100, 'raw', 'vm-100-cloudinit', 4096) });
is($c->{request}->{args}->{name}, 'vm-100-cloudinit', 'explicit name passed');
is($r[0], 'vm-100-cloudinit', 'named volume returned');

# vdisk_alloc: activate_storage (check_connection first) then alloc under the cluster lock
clear_calls($dir);
@PVE::Storage::Plugin::LOCKS_TAKEN = ();
my $volid = PVE::Storage::vdisk_alloc($cfg, 'dpool', 101, undef, undef, 1024 * 1024);
is($volid, 'dpool:vm-101-disk-0', 'vdisk_alloc returns storeid:volname');
is_deeply([map { $_->{argv}->[1] } @{ calls($dir) }], [qw(activate_storage alloc)],
    'vdisk_alloc call sequence: activate_storage, alloc');
is_deeply(\@PVE::Storage::Plugin::LOCKS_TAKEN, [['dpool', 'cluster']], 'alloc ran under the cluster-wide lock (shared)');

# --- free_image ----------------------------------------------------------------------
($c, @r) = one_call('free_image', sub { $P->free_image('dpool', $scfg, 'vm-100-cloudinit', 0, 'raw') });
is_deeply($c->{request}->{args}, { volname => 'vm-100-cloudinit', is_base => JSON::PP::false }, 'free_image args');
is($r[0], undef, 'free_image returns undef (no cleanup worker)');

# --- path / filesystem_path / qemu_blockdev_options / map ------------------------------
set_reply($dir, 'path', { ok => JSON::PP::true, result => { path => '/dev/drbd1000' } });
($c, @r) = one_call('path', sub { $P->path($scfg, 'vm-100-disk-0', 'dpool') });
is_deeply($c->{request}->{args}, { volname => 'vm-100-disk-0', snapname => undef }, 'path args');
is_deeply(\@r, ['/dev/drbd1000', 100, 'images'], 'path returns (path, vmid, vtype)');
ok(taint_free(\@r), 'path result untainted');
($c, @r) = one_call('path scalar', sub { scalar($P->path($scfg, 'vm-100-disk-0', 'dpool', 'snap1')) });
is($c->{request}->{args}->{snapname}, 'snap1', 'snapname passed to path');
is($r[0], '/dev/drbd1000', 'path in scalar context');
($c, @r) = one_call('filesystem_path', sub { scalar($P->filesystem_path($scfg, 'vm-100-disk-0')) });
is($c->{request}->{storeid}, 'dpool', 'filesystem_path finds its storeid from storage.cfg');
($c, @r) = one_call('PVE::Storage::path', sub { scalar(PVE::Storage::path($cfg, 'dpool:vm-100-disk-0')) });
is($r[0], '/dev/drbd1000', 'PVE::Storage::path: no activation, just path');
($c, @r) = one_call('qemu_blockdev_options', sub {
    $P->qemu_blockdev_options($scfg, 'dpool', 'vm-100-disk-0', '10.0', {}) });
is_deeply($r[0], { driver => 'host_device', filename => '/dev/drbd1000' }, 'blockdev: host_device + filename');
ok(taint_free($r[0]), 'blockdev options untainted');
($c, @r) = one_call('map_volume', sub { $P->map_volume('dpool', $scfg, 'vm-100-disk-0', undef, { 'guest-is-windows' => 0 }) });
is($c->{argv}->[1], 'path', 'map_volume asks the helper for the path (PVE activated the volume before)');
is($r[0], '/dev/drbd1000', 'map_volume returns the device');
ok(!tainted($r[0]), 'map_volume result untainted');
clear_calls($dir);
is($P->unmap_volume('dpool', $scfg, 'vm-100-disk-0'), 1, 'unmap_volume returns 1');
is(scalar(@{ calls($dir) }), 0, '... without a helper call (deactivate_volume demotes)');
set_reply($dir, 'path', { ok => JSON::PP::true, result => { path => '/dev/drbd1000; rm -rf /' } });
eval { $P->path($scfg, 'vm-100-disk-0', 'dpool') };
like($@, qr/invalid device path for path/, 'a path with shell metacharacters from the helper is refused');
set_reply($dir, 'path', undef);

# --- activation ----------------------------------------------------------------------------
($c, @r) = one_call('activate_volume', sub {
    $P->activate_volume('dpool', $scfg, 'vm-100-disk-0', undef, {}, { 'plugin-may-deactivate-volume' => 1 }) });
is_deeply($c->{request}->{args}, {
    volname => 'vm-100-disk-0', snapname => undef, migrated_from => undef,
    hints => { 'plugin-may-deactivate-volume' => JSON::PP::true },
}, 'activate_volume args (no migration)');
{
    local $ENV{PVE_MIGRATED_FROM} = 'pve2';
    ($c, @r) = one_call('activate_volume migration', sub {
        PVE::Storage::activate_volumes($cfg, ['dpool:vm-100-disk-0']) }, 'activate');
    is($c->{request}->{args}->{migrated_from}, 'pve2', 'migrated_from taken from PVE_MIGRATED_FROM');
    is($c->{request}->{args}->{hints}, undef, 'no hints: null');
    local $ENV{PVE_MIGRATED_FROM} = 'pve2;reboot';
    clear_calls($dir);
    eval { $P->activate_volume('dpool', $scfg, 'vm-100-disk-0') };
    like($@, qr/invalid PVE_MIGRATED_FROM/, 'odd PVE_MIGRATED_FROM refused');
    is(scalar(@{ calls($dir) }), 0, '... before running the helper');
}
($c, @r) = one_call('deactivate_volume', sub { $P->deactivate_volume('dpool', $scfg, 'vm-100-disk-0', 'snap1', {}) });
is_deeply($c->{request}->{args}, { volname => 'vm-100-disk-0', snapname => 'snap1' }, 'deactivate_volume args');
($c, @r) = one_call('activate_storage', sub { $P->activate_storage('dpool', $scfg, {}) });
is_deeply($c->{request}->{args}, {}, 'activate_storage args empty');
clear_calls($dir);
$P->deactivate_storage('dpool', $scfg, {});
is(scalar(@{ calls($dir) }), 0, 'deactivate_storage: nothing to do, no helper call');
is($P->check_connection('dpool', $scfg), 1, 'check_connection: helper installed');
is(scalar(@{ calls($dir) }), 0, 'check_connection runs no helper (pvestatd calls it every 10 s)');
{
    local $ENV{DRBDPOOL_BIN} = "$dir/missing";
    eval { PVE::Storage::activate_storage($cfg, 'dpool', {}) };
    like($@, qr/connection check for storage 'dpool' failed - drbdpool: helper '.*missing' not found/,
        'without the helper PVE refuses to activate the storage, saying why');
}
set_reply($dir, 'activate_storage', { ok => JSON::PP::false, error => { kind => 'refused',
    message => 'node pve1 is not registered with drbdpool: run `drbdpool node add pve1 --address <replication ip>`' } });
eval { PVE::Storage::activate_storage($cfg, 'dpool', {}) };
like($@, qr/activate_storage failed \(refused\): node pve1 is not registered/, 'activate_storage error passed on');
set_reply($dir, 'activate_storage', undef);

# --- status / storage_info --------------------------------------------------------------------
($c, @r) = one_call('status', sub { $P->status('dpool', $scfg, {}) });
is_deeply(\@r, [1073741824, 805306368, 268435456, 1], 'status: (total, avail, used, active) in bytes');
ok(taint_free(\@r), 'status untainted');
my $info = PVE::Storage::storage_info($cfg, 'images');
is_deeply([@{ $info->{dpool} }{qw(total avail used active shared)}], [1073741824, 805306368, 268435456, 1, 1],
    'storage_info shows the helper numbers, shared');
set_reply($dir, 'status', { ok => JSON::PP::true, result => { total => 10, avail => 5, used => 5, active => JSON::PP::false } });
is(($P->status('dpool', $scfg, {}))[3], 0, 'inactive reported as 0');
set_reply($dir, 'status', undef);

# --- list_images -------------------------------------------------------------------------------
my @listed = (
    { volid => 'dpool:vm-100-disk-0', format => 'raw', size => 4294967296, vmid => 100, ctime => 1700000000 },
    { volid => 'dpool:vm-101-disk-0', format => 'raw', size => 1073741824, vmid => 101 },
    { volid => 'dpool:base-102-disk-0', format => 'raw', size => 1073741824, vmid => 102 },
    # a linked clone: named <base>/<name> as PVE's ZFS and RBD plugins do
    { volid => 'dpool:base-102-disk-0/vm-103-disk-0', format => 'raw', size => 1073741824, vmid => 103, parent => 'base-102-disk-0' },
);
set_reply($dir, 'list', { ok => JSON::PP::true, result => { volumes => \@listed } });
($c, @r) = one_call('list_images all', sub { $P->list_images('dpool', $scfg, undef, undef, {}) });
is_deeply($c->{request}->{args}, {}, 'list_images without filter');
is_deeply($r[0], \@listed, 'list_images passes the helper entries {volid,format,size,vmid,ctime,parent} through');
ok(taint_free($r[0]), 'list_images untainted');
($c, @r) = one_call('list_images vmid', sub { $P->list_images('dpool', $scfg, 101, undef, {}) });
is($c->{request}->{args}->{vmid}, 101, 'vmid filter sent');
is_deeply([map { $_->{volid} } @{ $r[0] }], ['dpool:vm-101-disk-0'], 'filtered by vmid (also in Perl)');
($c, @r) = one_call('list_images vollist', sub {
    $P->list_images('dpool', $scfg, undef, ['dpool:base-102-disk-0/vm-103-disk-0', 'other:vm-100-disk-0'], {}) });
is_deeply($c->{request}->{args}->{vollist}, ['dpool:base-102-disk-0/vm-103-disk-0'], 'vollist: the volids of this storage');
is_deeply([map { $_->{volid} } @{ $r[0] }], ['dpool:base-102-disk-0/vm-103-disk-0'], 'filtered by vollist');
clear_calls($dir);
eval { PVE::Storage::vdisk_free($cfg, 'dpool:base-102-disk-0') };
like($@, qr/base volume 'base-102-disk-0' is still in use by linked clones/, 'vdisk_free of a used base refused by PVE');
ok(!grep({ $_->{argv}->[1] eq 'free' } @{ calls($dir) }), '... before the helper is asked to free it');
clear_calls($dir);
eval { PVE::Storage::vdisk_free($cfg, 'dpool:base-100-disk-0') };
is($@, '', 'vdisk_free of a base without clones goes ahead');
is(scalar(grep { $_->{argv}->[1] eq 'free' } @{ calls($dir) }), 1, '... and the helper frees it');
set_reply($dir, 'list', { ok => JSON::PP::true, result => { volumes => [
    { volid => 'other:vm-100-disk-0', format => 'raw', size => 1, vmid => 100 } ] } });
eval { $P->list_images('dpool', $scfg, undef, undef, {}) };
like($@, qr/returned 'other:vm-100-disk-0', not a volume of storage 'dpool'/, 'a helper entry of another storage is refused');
set_reply($dir, 'list', { ok => JSON::PP::true, result => { volumes => [ 'vm-100-disk-0' ] } });
eval { $P->list_images('dpool', $scfg, undef, undef, {}) };
like($@, qr/not a volume of storage 'dpool'/, 'a helper entry that is not an entry is refused');
set_reply($dir, 'list', undef);

# --- sizes -----------------------------------------------------------------------------------
set_reply($dir, 'size', { ok => JSON::PP::true, result => { size => 4294967296, used => 1048576, ctime => 1700000000 } });
($c, @r) = one_call('volume_size_info', sub { [$P->volume_size_info($scfg, 'dpool', 'vm-100-disk-0', 3)] });
is_deeply($c->{request}->{args}, { volname => 'vm-100-disk-0' }, 'volume_size_info args');
is_deeply($r[0], [4294967296, 'raw', 1048576, undef, 1700000000], 'list context: (size, format, used, parent, ctime)');
($c, @r) = one_call('volume_size_info scalar', sub { scalar(PVE::Storage::volume_size_info($cfg, 'dpool:vm-100-disk-0', 5)) });
is($r[0], 4294967296, 'scalar context: bytes');
ok(!tainted($r[0]), 'size untainted');
set_reply($dir, 'size', undef);

($c, @r) = one_call('volume_resize', sub { PVE::Storage::volume_resize($cfg, 'dpool:vm-100-disk-0', 5 * 1024**3 + 1, 1) });
is_deeply($c->{request}->{args}, { volname => 'vm-100-disk-0', size_bytes => 5 * 1024**3 + 1024, running => JSON::PP::true },
    'volume_resize: bytes (padded to KiB by PVE), running flag');
clear_calls($dir);
eval { $P->volume_resize($scfg, 'dpool', 'vm-100-disk-0', 1048576, 0, 'snap1') };
like($@, qr/resizing a snapshot is not supported/, 'resize with $snapname dies');
eval { $P->volume_resize($scfg, 'dpool', 'vm-100-disk-0', 1000, 0) };
like($@, qr/not a multiple of 1024/, 'resize to a non-KiB size dies');
eval { $P->volume_resize($scfg, 'dpool', 'vm-100-disk-0', '-5', 0) };
like($@, qr/non-negative integer/, 'negative size dies');
is(scalar(@{ calls($dir) }), 0, 'none of these reached the helper');

# --- snapshots and features ---------------------------------------------------------------------
for my $m (qw(volume_snapshot volume_snapshot_rollback)) {
    ($c, @r) = one_call($m, sub { $P->$m($scfg, 'dpool', 'vm-100-disk-0', 'snap1') });
    (my $hm = $m) =~ s/^volume_//;
    is($c->{argv}->[1], $hm, "$m -> helper $hm");
    is_deeply($c->{request}->{args}, { volname => 'vm-100-disk-0', snap => 'snap1' }, "$m args");
}
($c, @r) = one_call('volume_snapshot_delete', sub { $P->volume_snapshot_delete($scfg, 'dpool', 'vm-100-disk-0', 'snap1', 1) });
is_deeply($c->{request}->{args}, { volname => 'vm-100-disk-0', snap => 'snap1', running => JSON::PP::true },
    'volume_snapshot_delete args');
set_reply($dir, 'rollback_is_possible',
    { ok => JSON::PP::true, result => { possible => JSON::PP::false, blockers => ['snap2', 'snap3'] } });
my $blockers = [];
eval { $P->volume_rollback_is_possible($scfg, 'dpool', 'vm-100-disk-0', 'snap1', $blockers) };
like($@, qr/can't rollback.*snap2, snap3/, 'rollback refused, naming the newer snapshots');
is_deeply($blockers, ['snap2', 'snap3'], 'blockers pushed for PVE');
# A reply that is not plain ASCII is untainted by walking it, arrays of strings included.
set_reply($dir, 'rollback_is_possible',
    { ok => JSON::PP::true, result => { possible => JSON::PP::false, blockers => ['snap2', 'snap3'], note => "caf\x{e9}" } });
$blockers = [];
eval { $P->volume_rollback_is_possible($scfg, 'dpool', 'vm-100-disk-0', 'snap1', $blockers) };
like($@, qr/can't rollback.*snap2, snap3/, 'non-ASCII reply: rollback refused, naming the newer snapshots');
is_deeply($blockers, ['snap2', 'snap3'], 'non-ASCII reply: blockers walked and untainted');
ok(taint_free($blockers), 'non-ASCII reply: blockers untainted');
set_reply($dir, 'rollback_is_possible', undef);
is($P->volume_rollback_is_possible($scfg, 'dpool', 'vm-100-disk-0', 'snap1', []), 1, 'rollback possible: 1');
set_reply($dir, 'snapshot_list', { ok => JSON::PP::true, result => { snapshots => {
    snap1 => { id => 'abc', timestamp => 1700000001 } } } });
($c, @r) = one_call('volume_snapshot_info', sub { $P->volume_snapshot_info($scfg, 'dpool', 'vm-100-disk-0') });
is_deeply($r[0], { snap1 => { name => 'snap1', id => 'abc', timestamp => 1700000001 } }, 'volume_snapshot_info');
ok(taint_free($r[0]), 'snapshot info untainted');
eval { $P->rename_snapshot($scfg, 'dpool', 'vm-100-disk-0', 'a', 'b') };
like($@, qr/not supported/, 'rename_snapshot not supported');

($c, @r) = one_call('volume_has_feature', sub { PVE::Storage::volume_has_feature($cfg, 'copy', 'dpool:vm-100-disk-0', undef, 0) });
is($c->{argv}->[1], 'has_feature', 'helper method has_feature');
is_deeply($c->{request}->{args}, { feature => 'copy', volname => 'vm-100-disk-0', snapname => undef, running => JSON::PP::false },
    'volume_has_feature args');
is($r[0], 1, 'feature the helper has: 1');
($c, @r) = one_call('volume_has_feature no', sub { $P->volume_has_feature($scfg, 'clone', 'dpool', 'vm-100-disk-0', 'snap1', 0) });
is($r[0], undef, 'feature the helper lacks: undef');
clear_calls($dir);
is($P->volume_has_feature($scfg, 'teleport', 'dpool', 'vm-100-disk-0'), undef, 'unknown feature: undef');
is(scalar(@{ calls($dir) }), 0, '... without asking the helper');

# --- templates, clones, renames ---------------------------------------------------------------------
set_reply($dir, 'create_base', { ok => JSON::PP::true, result => { volname => 'base-100-disk-0' } });
($c, @r) = one_call('create_base', sub { PVE::Storage::vdisk_create_base($cfg, 'dpool:vm-100-disk-0') }, 'create_base');
is_deeply($c->{request}->{args}, { volname => 'vm-100-disk-0' }, 'create_base args');
is($r[0], 'dpool:base-100-disk-0', 'vdisk_create_base result');
clear_calls($dir);
eval { $P->create_base('dpool', $scfg, 'base-100-disk-0') };
like($@, qr/not possible with base image/, 'create_base of a base dies without a call');
set_reply($dir, 'clone', { ok => JSON::PP::true, result => { volname => 'base-100-disk-0/vm-200-disk-0' } });
($c, @r) = one_call('clone_image', sub { PVE::Storage::vdisk_clone($cfg, 'dpool:base-100-disk-0', 200, undef) }, 'clone');
is_deeply($c->{request}->{args}, { volname => 'base-100-disk-0', vmid => 200, snap => undef }, 'clone args');
is($r[0], 'dpool:base-100-disk-0/vm-200-disk-0', 'vdisk_clone result: <base>/<name>');
is_deeply([$P->parse_volname('base-100-disk-0/vm-200-disk-0')],
    ['images', 'vm-200-disk-0', 200, 'base-100-disk-0', 100, '', 'raw'], 'parse_volname of a clone names its base');
is_deeply([$P->parse_volname('base-100-disk-0/base-200-disk-0')],
    ['images', 'base-200-disk-0', 200, 'base-100-disk-0', 100, 1, 'raw'], '... also when the clone became a template');
is_deeply([$P->parse_volname('base-100-disk-0')], ['images', 'base-100-disk-0', 100, undef, undef, 1, 'raw'],
    'parse_volname of a plain base');
for my $bad ('vm-100-disk-0/vm-200-disk-0', 'base-100-disk-0/vm-200-disk-0/x', 'base-100-disk-0/', 'base-1-a/../vm-2-b') {
    eval { $P->parse_volname($bad) };
    like($@, qr/unable to parse drbdpool volume name|invalid volume name/, "parse_volname refuses '$bad'");
}
($c, @r) = one_call('path of a clone', sub { $P->path($scfg, 'base-100-disk-0/vm-200-disk-0', 'dpool') });
is($c->{request}->{args}->{volname}, 'vm-200-disk-0', 'path asks for the clone by its own name');
($c, @r) = one_call('free of a clone', sub { $P->free_image('dpool', $scfg, 'base-100-disk-0/vm-200-disk-0', 0) });
is($c->{request}->{args}->{volname}, 'base-100-disk-0/vm-200-disk-0', 'free sends the name PVE knows (the helper checks the base)');
for my $wrong ('vm-200-disk-0', 'base-100-disk-0/vm-201-disk-0') {
    set_reply($dir, 'clone', { ok => JSON::PP::true, result => { volname => $wrong } });
    eval { $P->clone_image($scfg, 'dpool', 'base-100-disk-0', 200) };
    like($@, qr/not owned by VM 200/, "a clone reply '$wrong' is refused");
}
set_reply($dir, 'rename', { ok => JSON::PP::true, result => { volname => 'vm-300-disk-1' } });
($c, @r) = one_call('rename_volume', sub { $P->rename_volume($scfg, 'dpool', 'vm-100-disk-0', 300, undef) });
is_deeply($c->{request}->{args}, { volname => 'vm-100-disk-0', target_vmid => 300, target_volname => undef },
    'rename_volume args');
is($r[0], 'dpool:vm-300-disk-1', 'rename_volume returns the full volid');

done_testing();
