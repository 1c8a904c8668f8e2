#!/usr/bin/perl -T
# Resync speed properties (issue 16): drbdpool-resync-rate-max / -min are storage.cfg
# properties an admin may change (`pvesm set`), checked by the plugin's hooks (a bad value
# dies with what to write, so PVE writes nothing) and passed to the helper with every call.

use strict;
use warnings;

use Test::More;

BEGIN { $ENV{PATH} = '/usr/bin:/bin'; delete @ENV{qw(IFS CDPATH ENV BASH_ENV)}; }

use PVE::Storage;
use DrbdPoolTest qw(fake_setup calls clear_calls);

my $P = 'PVE::Storage::Custom::DRBDPoolPlugin';
my $dir = fake_setup();
$ENV{DRBDPOOL_NODE} = 'pve1';
my $base = { type => 'drbdpool', vgname => 'ssd', thinpool => 'data' };

# Registered, changeable (not fixed), optional.
my $opts = $P->options();
for my $k (qw(drbdpool-resync-rate-max drbdpool-resync-rate-min)) {
    ok($P->properties()->{$k}, "$k is a property");
    is_deeply($opts->{$k}, { optional => 1 }, "$k can be set and changed later");
}

for my $ok ([{}, 'none set'], [{ 'drbdpool-resync-rate-max' => '110M' }, 'max 110M'],
    [{ 'drbdpool-resync-rate-max' => '1G', 'drbdpool-resync-rate-min' => '20m' }, 'max 1G, min 20m'],
    [{ 'drbdpool-resync-rate-min' => '0' }, 'min 0'], [{ 'drbdpool-resync-rate-max' => '250K' }, 'max 250K'],
    [{ 'drbdpool-resync-rate-max' => '4G', 'drbdpool-resync-rate-min' => '4G' }, 'min = max = 4G'])
{
    eval { $P->on_add_hook('dpool', { %$base, %{ $ok->[0] } }) };
    is($@, '', "accepted: $ok->[1]");
}

my @bad = (
    [{ 'drbdpool-resync-rate-max' => '100' }, qr/drbdpool-resync-rate-max '100' is not a rate: write digits and a unit K, M or G/],
    [{ 'drbdpool-resync-rate-max' => '100MB' }, qr/'100MB' is not a rate/],
    [{ 'drbdpool-resync-rate-max' => '1.5G' }, qr/'1.5G' is not a rate/],
    [{ 'drbdpool-resync-rate-max' => '5G' }, qr/above DRBD's limit of 4G/],
    [{ 'drbdpool-resync-rate-max' => '100K' }, qr/at least 250K/],
    [{ 'drbdpool-resync-rate-min' => 'fast' }, qr/drbdpool-resync-rate-min 'fast' is not a rate/],
    [{ 'drbdpool-resync-rate-max' => '50M', 'drbdpool-resync-rate-min' => '60M' },
        qr/drbdpool-resync-rate-min \(60M\) is above drbdpool-resync-rate-max \(50M\): lower the min or raise the max/],
);
for my $b (@bad) {
    eval { $P->on_add_hook('dpool', { %$base, %{ $b->[0] } }) };
    like($@, $b->[1], 'pvesm add refused: ' . join(' ', %{ $b->[0] }));
}

# pvesm set: the hook sees the merged configuration; a bad update dies before PVE writes it.
my $cur = { %$base, 'drbdpool-resync-rate-max' => '50M' };
eval { $P->on_update_hook_full('dpool', $cur, { 'drbdpool-resync-rate-min' => '60M' }, []) };
like($@, qr/is above drbdpool-resync-rate-max \(50M\)/, 'pvesm set: min above the current max refused');
is_deeply($cur, { %$base, 'drbdpool-resync-rate-max' => '50M' }, '... the configuration it was given is unchanged');
eval { $P->on_update_hook_full('dpool', $cur, { 'drbdpool-resync-rate-min' => '20M' }, []) };
is($@, '', 'pvesm set: a good min accepted');
eval { $P->on_update_hook_full('dpool', { %$cur, 'drbdpool-resync-rate-min' => '20M' }, {}, ['drbdpool-resync-rate-max']) };
is($@, '', 'deleting the max (back to 4G) with min 20M: accepted');

# storage.cfg with them parses, and the helper gets them with every call (activate_storage
# records them for the agents: src/protocol/query.rs).
PVE::Storage::set_config_text(<<'CFG');
drbdpool: dpool
	vgname ssd
	thinpool data
	content images
	drbdpool-resync-rate-max 110M
	drbdpool-resync-rate-min 20M
CFG
my $cfg = PVE::Storage::config();
is($cfg->{ids}->{dpool}->{'drbdpool-resync-rate-max'}, '110M', 'storage.cfg parsed');
clear_calls($dir);
PVE::Storage::activate_storage($cfg, 'dpool');
my ($act) = grep { $_->{argv}->[1] eq 'activate_storage' } @{ calls($dir) };
is_deeply([@{ $act->{request}->{scfg} }{qw(drbdpool-resync-rate-max drbdpool-resync-rate-min)}], ['110M', '20M'],
    'activate_storage sends them to the helper');

done_testing();
