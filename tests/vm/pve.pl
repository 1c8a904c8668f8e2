#!/usr/bin/perl -T
# The lab's driver for PVE calls, /root/pve.pl in every guest (it travels with
# the project's files in the guests' second cpio): what PVE does, in PVE's own
# order, through the real plugin class (perl -T like pvedaemon), on the
# storage.cfg entry {type drbdpool, vgname ssd, thinpool data, content
# images,rootdir}. One JSON line out: the call's result and its duration; a
# refusal dies with the plugin's message (exit code non-zero).
#
#   perl -T /root/pve.pl alloc VMID KIB [NAME] | activate VOL | deactivate VOL | path VOL
#                        | resize VOL BYTES [RUNNING] | size VOL | free VOL
use strict;
use warnings;
use lib '/opt/perl-shim', '/opt/perl-shim/t/lib';
BEGIN { $ENV{PATH} = '/usr/sbin:/usr/bin:/sbin:/bin'; delete @ENV{qw(IFS CDPATH ENV BASH_ENV)}; }
use JSON::PP;
use Time::HiRes qw(time);
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
} else {
    die "usage: pve.pl alloc VMID KIB [NAME] | activate VOL | deactivate VOL | path VOL | resize VOL BYTES | size VOL"
        . " | free VOL\n";
}
$r->{seconds} = 0 + sprintf('%.2f', time - $t0);
print JSON::PP->new->canonical->encode($r), "\n";
