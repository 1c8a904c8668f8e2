#!/usr/bin/perl -T
# Loading through the stand-in PVE::Storage loader, registration data,
# storage.cfg parsing, api() against PVE APIVER 14/15/16.

use strict;
use warnings;

use Test::More;
use File::Temp qw(tempdir);

BEGIN { $ENV{PATH} = '/usr/bin:/bin'; delete @ENV{qw(IFS CDPATH ENV BASH_ENV)}; }

use PVE::Storage;

my $P = 'PVE::Storage::Custom::DRBDPoolPlugin';

# --- loaded and registered ----------------------------------------------------
is_deeply([grep { m/DRBDPool/ } @PVE::Storage::LOAD_WARNINGS], [], 'loader: no error or warning for DRBDPoolPlugin');
is(PVE::Storage::Plugin->lookup('drbdpool'), $P, "type 'drbdpool' registered");
ok($P->isa('PVE::Storage::Plugin'), 'derived from PVE::Storage::Plugin');
is(scalar(grep { $_ eq 'drbdpool' } @PVE::Storage::Plugin::SHARED_STORAGE), 1,
    "'drbdpool' is in SHARED_STORAGE exactly once");
{
    # a second load (e.g. `do` by a daemon reload) must not push it twice
    local $SIG{__WARN__} = sub { warn @_ if $_[0] !~ m/redefined/ };
    my ($file) = $INC{'PVE/Storage/Custom/DRBDPoolPlugin.pm'} =~ m{^(.*)$};
    do $file or die "reload failed: $@";
    is(scalar(grep { $_ eq 'drbdpool' } @PVE::Storage::Plugin::SHARED_STORAGE), 1,
        're-loading the module does not duplicate the SHARED_STORAGE entry');
}

my $props = $P->properties();
is_deeply([grep { !m/^drbdpool-/ } sort keys %$props], [], 'every own property is prefixed drbdpool-');
my $opts = $P->options();
my $plist = PVE::Storage::Plugin->private()->{propertyList};
ok(!grep({ !$plist->{$_} } keys %$opts), 'every option is a known property');
ok($opts->{$_}->{optional}, "option $_ is optional") for sort keys %$opts;
ok($opts->{$_}->{fixed}, "option $_ is fixed") for qw(vgname thinpool drbdpool-backend drbdpool-dir);
ok(!exists($opts->{shared}), "no 'shared' option: SHARED_STORAGE forces shared=1");

my $pd = $P->plugindata();
is_deeply($pd->{content}, [{ images => 1, rootdir => 1 }, { images => 1 }], 'content images+rootdir, default images');
is_deeply($pd->{format}, [{ raw => 1 }, 'raw'], 'format raw only');
is_deeply(PVE::Storage::Plugin::sensitive_properties('drbdpool'), [], 'no sensitive properties (not the legacy list)');
is_deeply($P->get_formats({ type => 'drbdpool' }, 'x'), { default => 'raw', valid => { raw => 1 } }, 'get_formats');
is($P->volume_qemu_snapshot_method('dpool', { type => 'drbdpool' }, 'vm-100-disk-0'), 'storage',
    'volume_qemu_snapshot_method: storage');
is($P->storage_can_replicate({}, 'dpool', 'raw'), 0, 'storage_can_replicate 0');
is_deeply([$P->volume_export_formats({}, 'dpool', 'vm-1-disk-0', undef, undef, 0)], ['raw+size'], 'export formats');
is_deeply([$P->volume_export_formats({}, 'dpool', 'vm-1-disk-0', 'snap1', undef, 0)], [], 'no snapshot export');
is_deeply([$P->volume_import_formats({}, 'dpool', 'vm-1-disk-0', undef, undef, 1)], [], 'no import with snapshots');

# --- storage.cfg ------------------------------------------------------------------
PVE::Storage::set_config_text(<<'CFG');
dir: local
	path /var/lib/vz
	content iso,vztmpl,backup

drbdpool: dpool
	drbdpool-backend lvmthin
	vgname ssd
	thinpool data
	nodes pve1,pve2
	drbdpool-replicas 2

drbdpool: labpool
	drbdpool-backend file
	drbdpool-dir /var/lib/drbdpool-lab
	content images,rootdir
CFG
my $cfg;
{
    my @w;
    local $SIG{__WARN__} = sub { push @w, @_ };
    $cfg = PVE::Storage::config();
    is_deeply(\@w, [], 'storage.cfg parses without warnings');
}
my $s = $cfg->{ids}->{dpool};
is($s->{shared}, 1, 'parse_config sets shared=1 for drbdpool');
is_deeply($s->{content}, { images => 1 }, 'default content images');
is_deeply($s->{nodes}, { pve1 => 1, pve2 => 1 }, 'nodes parsed');
is_deeply($cfg->{ids}->{labpool}->{content}, { images => 1, rootdir => 1 }, 'content images,rootdir');
ok(!$cfg->{ids}->{local}->{shared}, 'dir storage stays local');

{
    my @w;
    local $SIG{__WARN__} = sub { push @w, @_ };
    PVE::Storage::set_config_text("drbdpool: bad\n\tdrbdpool-replicas 5\n\tpool foo\n");
    my $bad = PVE::Storage::config();
    ok(!exists($bad->{ids}->{bad}->{'drbdpool-replicas'}), 'drbdpool-replicas 5 rejected (max 3)');
    ok((grep { m/unexpected property 'pool'/ } @w), "unknown property 'pool' rejected");
}

# --- on_add_hook checks the backend's needs ----------------------------------------
eval { $P->on_add_hook('x', { type => 'drbdpool', vgname => 'ssd' }) };
like($@, qr/lvmthin.*needs 'vgname' and 'thinpool'/, 'lvmthin without thinpool refused');
eval { $P->on_add_hook('x', { type => 'drbdpool', 'drbdpool-backend' => 'file' }) };
like($@, qr/file.*needs 'drbdpool-dir'/, 'file backend without dir refused');
eval { $P->on_add_hook('x', { type => 'drbdpool', 'drbdpool-backend' => 'lvm', vgname => 'v' }) };
is($@, '', 'lvm backend with vgname accepted');
eval { $P->on_update_hook_full('x', { type => 'drbdpool', vgname => 'ssd', thinpool => 'd' }, {}, ['thinpool']) };
like($@, qr/needs 'vgname' and 'thinpool'/, 'update deleting thinpool refused');

# --- api() versus the PVE it runs in -------------------------------------------------
sub with_apiver {
    my ($ver, $code) = @_;
    no warnings 'redefine';
    my $orig = \&PVE::Storage::APIVER;
    local *PVE::Storage::APIVER = sub () { $ver };
    return $code->();
}
is(with_apiver(15, sub { $P->api() }), 15, 'APIVER 15: api() 15');
is(with_apiver(14, sub { $P->api() }), 14, 'APIVER 14: api() 14 (follows the older PVE)');
is(with_apiver(16, sub { $P->api() }), 15, 'APIVER 16: api() 15 (newest tested)');
is(with_apiver(16, sub { PVE::Storage::check_plugin_api($P) }), 15, 'APIVER 16 (AGE 6): loader accepts 15');
is(with_apiver(14, sub { PVE::Storage::check_plugin_api($P) }), 14, 'APIVER 14: loader accepts 14');

# --- a plugin reusing an existing property takes all of PVE::Storage down --------------
# (proves the stand-in's check bites, so the clean load above means something)
SKIP: {
    my $dir = tempdir(CLEANUP => 1);
    ($dir) = $dir =~ m{^(/[\w./-]+)$};
    mkdir "$dir/PVE";
    mkdir "$dir/PVE/Storage";
    mkdir "$dir/PVE/Storage/Custom";
    open(my $fh, '>', "$dir/PVE/Storage/Custom/BadPlugin.pm") or skip 'cannot write', 1;
    print $fh "package PVE::Storage::Custom::BadPlugin; use base qw(PVE::Storage::Plugin);\n"
        . "sub api { 15 } sub type { 'bad' } sub plugindata { {} }\n"
        . "sub properties { { vgname => { type => 'string' } } } sub options { {} } 1;\n";
    close($fh);
    my ($lib) = $INC{'PVE/Storage.pm'} =~ m{^(/?.*)/PVE/Storage\.pm$};
    $lib = "." if $lib eq '';
    ($lib) = $lib =~ m{^([\w./-]+)$};
    local $ENV{PVE_STORAGE_CUSTOM_DIR} = "$dir/PVE/Storage/Custom";
    my ($perl) = $^X =~ m{^(/[\w./-]+)$};
    my $pid = open(my $ph, '-|') // die "fork: $!";
    if (!$pid) {
        open(STDERR, '>&', \*STDOUT);
        exec($perl, '-T', "-I$dir", "-I$lib", '-e', 'use PVE::Storage; print "loaded\n"');
        die "exec: $!";
    }
    my $out = do { local $/; <$ph> };
    close($ph);
    like($out, qr/duplicate property 'vgname'/, 'duplicate property dies in init()');
    unlike($out, qr/loaded/, '... and PVE::Storage does not load at all');
}

done_testing();
