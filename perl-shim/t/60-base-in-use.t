#!/usr/bin/perl -T
# A template with linked clones cannot be freed (issue 16). PVE decides that in
# PVE::Storage::volume_is_base_and_used, called by vdisk_free under the storage
# lock: it lists the storage and runs the plugin's parse_volname on every volid,
# looking for one whose base name and base vmid are the template's. So the clone's
# volid must carry its base (`base-100-disk-0/vm-101-disk-0`) and parse_volname
# must return it.
#
# With PVE_STORAGE_SRC=/path/to/pve-storage/src (e.g. libpve-storage-perl's source
# unpacked), the real volume_is_base_and_used and vdisk_free are loaded from its
# PVE/Storage.pm over the stand-in's and run against this plugin; without it the
# stand-in's copy of the same code runs (t/lib/PVE/Storage.pm).

use strict;
use warnings;

use Test::More;

BEGIN { $ENV{PATH} = '/usr/bin:/bin'; delete @ENV{qw(IFS CDPATH ENV BASH_ENV)}; }

use PVE::Storage;
use DrbdPoolTest qw(fake_setup set_reply calls clear_calls);

my $P = 'PVE::Storage::Custom::DRBDPoolPlugin';
my $dir = fake_setup();
$ENV{DRBDPOOL_NODE} = 'pve1';

# The text of `sub NAME { ... }` (up to the first "}" in column 0) in a Perl file.
sub sub_text {
    my ($file, $name) = @_;
    open(my $fh, '<', $file) or die "cannot read $file: $!\n";
    my $src = do { local $/; <$fh> };
    close($fh);
    my ($text) = $src =~ m/^(sub \Q$name\E \{\n.*?^\}\n)/ms or die "no sub $name in $file\n";
    return $text;
}
sub normalized { my ($t) = @_; $t =~ s/#[^\n]*//g; $t =~ s/\s+/ /g; return $t }

my $real = $ENV{PVE_STORAGE_SRC};
SKIP: {
    skip 'set PVE_STORAGE_SRC to pve-storage\'s src/ to run its own volume_is_base_and_used and vdisk_free', 3
        if !$real;
    ($real) = $real =~ m{^(/[\w./+-]+)$} or die "PVE_STORAGE_SRC must be an absolute path\n";
    my $file = "$real/PVE/Storage.pm";
    for my $name (qw(volume_is_base_and_used vdisk_free)) {
        my ($code) = sub_text($file, $name) =~ m/^(.*)\z/s; # untaint: our own test input
        if ($name eq 'volume_is_base_and_used') {
            is(normalized($code), normalized(sub_text($INC{'PVE/Storage.pm'}, $name)),
                "the stand-in's $name is PVE's own");
        }
        no warnings 'redefine';
        eval "package PVE::Storage; $code; 1" or die "loading PVE's $name: $@";
        pass("PVE's own $name loaded from $file");
    }
}

PVE::Storage::set_config_text(<<'CFG');
drbdpool: dpool
	vgname ssd
	thinpool data
	content images,rootdir
CFG
my $cfg = PVE::Storage::config();

my @vols = (
    { volid => 'dpool:base-100-disk-0', format => 'raw', size => 1 << 30, vmid => 100 },
    { volid => 'dpool:base-100-disk-1', format => 'raw', size => 1 << 30, vmid => 100 },
    { volid => 'dpool:base-100-disk-0/vm-101-disk-0', format => 'raw', size => 1 << 30, vmid => 101, parent => 'base-100-disk-0' },
    { volid => 'dpool:base-100-disk-0/vm-102-disk-0', format => 'raw', size => 1 << 30, vmid => 102, parent => 'base-100-disk-0' },
    { volid => 'dpool:vm-103-disk-0', format => 'raw', size => 1 << 30, vmid => 103 },
);
sub listing { set_reply($dir, 'list', { ok => JSON::PP::true, result => { volumes => [@_] } }) }
sub helper_frees { return [map { $_->{request}->{args}->{volname} } grep { $_->{argv}->[1] eq 'free' } @{ calls($dir) }] }

listing(@vols);
is(PVE::Storage::volume_is_base_and_used($cfg, 'dpool:base-100-disk-0'), 1, 'base with two clones: in use');
is(PVE::Storage::volume_is_base_and_used($cfg, 'dpool:base-100-disk-1'), 0, 'base without clones: not in use');
is(PVE::Storage::volume_is_base_and_used($cfg, 'dpool:base-100-disk-0/vm-101-disk-0'), 0, 'a clone is no base');

clear_calls($dir);
eval { PVE::Storage::vdisk_free($cfg, 'dpool:base-100-disk-0') };
is($@, "base volume 'base-100-disk-0' is still in use by linked clones\n", 'vdisk_free of the used base: PVE refuses');
is_deeply(helper_frees(), [], '... and never asks the helper to free it');

# The clones go, one by one; only then the base.
for my $clone ('base-100-disk-0/vm-101-disk-0', 'base-100-disk-0/vm-102-disk-0') {
    clear_calls($dir);
    eval { PVE::Storage::vdisk_free($cfg, "dpool:$clone") };
    is($@, '', "vdisk_free of clone $clone");
    is_deeply(helper_frees(), [$clone], '... sent to the helper as PVE names it');
    @vols = grep { $_->{volid} ne "dpool:$clone" } @vols;
    listing(@vols);
}
clear_calls($dir);
eval { PVE::Storage::vdisk_free($cfg, 'dpool:base-100-disk-0') };
is($@, '', 'vdisk_free of the base once its clones are gone');
is_deeply(helper_frees(), ['base-100-disk-0'], '... the helper frees it');

# The old form (before issue 16): a clone listed by its own name with only `parent`.
# PVE does not see it, which is why the helper refuses too (tests/handlers.rs).
listing({ volid => 'dpool:base-100-disk-0', format => 'raw', size => 1, vmid => 100 },
    { volid => 'dpool:vm-101-disk-0', format => 'raw', size => 1, vmid => 101, parent => 'base-100-disk-0' });
is(PVE::Storage::volume_is_base_and_used($cfg, 'dpool:base-100-disk-0'), 0,
    'control: a clone listed without its base in the volid is invisible to PVE');

done_testing();
