#!/usr/bin/perl -T
# raw+size export/import through PVE::Storage::volume_export/volume_import,
# against the fake helper's file-backed volumes.

use strict;
use warnings;

use Test::More;
use Digest::MD5 qw(md5_hex);

BEGIN { $ENV{PATH} = '/usr/bin:/bin'; delete @ENV{qw(IFS CDPATH ENV BASH_ENV)}; }

use PVE::Storage;
use DrbdPoolTest qw(fake_setup set_reply calls clear_calls);

my $dir = fake_setup();
$ENV{DRBDPOOL_NODE} = 'pve1';
PVE::Storage::set_config_text("drbdpool: dpool\n\tdrbdpool-backend file\n\tdrbdpool-dir $dir/dev\n");
my $cfg = PVE::Storage::config();

# a source volume with known content
my $volid = PVE::Storage::vdisk_alloc($cfg, 'dpool', 100, 'raw', undef, 1024); # 1 MiB
is($volid, 'dpool:vm-100-disk-0', 'source allocated');
my $content = join('', map { chr($_ % 251) } 1 .. 1024 * 1024);
{
    open(my $fh, '+<', "$dir/dev/vm-100-disk-0") or die;
    print $fh $content;
    close($fh);
}

is_deeply([PVE::Storage::volume_transfer_formats($cfg, $volid, $volid, undef, undef, 0)], ['raw+size'],
    'transfer format raw+size');

# export
clear_calls($dir);
open(my $out, '>', "$dir/stream") or die;
PVE::Storage::volume_export($cfg, $out, $volid, 'raw+size', undef, undef, 0);
close($out);
my $stream = do { open(my $fh, '<', "$dir/stream") or die; binmode($fh); local $/; <$fh> };
is(length($stream), 8 + 1024 * 1024, 'stream = 8-byte header + data');
is(unpack('Q<', substr($stream, 0, 8)), 1024 * 1024, 'header: little-endian u64 size in bytes');
is(md5_hex(substr($stream, 8)), md5_hex($content), 'data exported unchanged');
is_deeply([map { $_->{argv}->[1] } @{ calls($dir) }],
    [qw(activate size path deactivate)], 'export: activate, size, path, deactivate');

eval { PVE::Storage::volume_export($cfg, $out, $volid, 'raw+size', 'snap1', undef, 0) };
like($@, qr/cannot export a snapshot/, 'snapshot export refused');
eval { PVE::Storage::volume_export($cfg, $out, $volid, 'qcow2+size', undef, undef, 0) };
like($@, qr/format 'qcow2\+size' not available/, 'other formats refused');

# import under a new name
clear_calls($dir);
open(my $in, '<', "$dir/stream") or die;
my $new = PVE::Storage::volume_import($cfg, $in, 'dpool:vm-200-disk-0', 'raw+size', undef, undef, 0, 0);
close($in);
is($new, 'dpool:vm-200-disk-0', 'import returns storeid:volname');
my $calls = calls($dir);
is_deeply([map { $_->{argv}->[1] } @$calls],
    [qw(list alloc activate path deactivate)], 'import call sequence');
my ($alloc) = grep { $_->{argv}->[1] eq 'alloc' } @$calls;
is_deeply($alloc->{request}->{args}, { vmid => 200, fmt => 'raw', name => 'vm-200-disk-0', size_kib => 1024 },
    'import allocates the header size in KiB');
my $imported = do { open(my $fh, '<', "$dir/dev/vm-200-disk-0") or die; binmode($fh); local $/; <$fh> };
is(md5_hex($imported), md5_hex($content), 'imported data identical');

# existing name: refused without allow_rename, renamed with it
open($in, '<', "$dir/stream") or die;
eval { PVE::Storage::volume_import($cfg, $in, 'dpool:vm-200-disk-0', 'raw+size', undef, undef, 0, 0) };
like($@, qr/'dpool:vm-200-disk-0' already exists/, 'existing volume: refused');
close($in);
open($in, '<', "$dir/stream") or die;
{
    my @w;
    local $SIG{__WARN__} = sub { push @w, @_ };
    $new = PVE::Storage::volume_import($cfg, $in, 'dpool:vm-200-disk-0', 'raw+size', undef, undef, 0, 1);
    like($w[0] // '', qr/importing with a different name/, 'allow_rename warns');
}
close($in);
is($new, 'dpool:vm-200-disk-1', 'allow_rename: a free name');

# truncated stream: the allocated volume is freed again
open(my $short, '>', "$dir/short") or die;
print $short substr($stream, 0, 8 + 4096);
close($short);
clear_calls($dir);
open($in, '<', "$dir/short") or die;
eval { PVE::Storage::volume_import($cfg, $in, 'dpool:vm-300-disk-0', 'raw+size', undef, undef, 0, 0) };
close($in);
like($@, qr/stream ended 4096 of 1048576 bytes in/, 'short stream: clear error');
is_deeply([map { $_->{argv}->[1] } @{ calls($dir) }],
    [qw(list alloc activate path deactivate free)],
    'short stream: deactivated and freed');
ok(!-e "$dir/dev/vm-300-disk-0", 'nothing left behind');

# header not a multiple of 1 KiB
open($short, '>', "$dir/odd") or die;
print $short pack('Q<', 1000), 'x' x 1000;
close($short);
clear_calls($dir);
open($in, '<', "$dir/odd") or die;
eval { PVE::Storage::volume_import($cfg, $in, 'dpool:vm-301-disk-0', 'raw+size', undef, undef, 0, 0) };
close($in);
like($@, qr/not a multiple of 1 KiB/, 'odd header size refused');
ok(!grep({ $_->{argv}->[1] eq 'alloc' } @{ calls($dir) }), '... before allocating');

# alloc fails: nothing to free
set_reply($dir, 'alloc', { ok => JSON::PP::false, error => { kind => 'refused', message => 'no space on pve2' } });
clear_calls($dir);
open($in, '<', "$dir/stream") or die;
eval { PVE::Storage::volume_import($cfg, $in, 'dpool:vm-302-disk-0', 'raw+size', undef, undef, 0, 0) };
close($in);
like($@, qr/alloc failed \(refused\): no space on pve2/, 'alloc failure passed on');
ok(!grep({ $_->{argv}->[1] eq 'free' } @{ calls($dir) }), 'nothing freed when nothing was allocated');

done_testing();
