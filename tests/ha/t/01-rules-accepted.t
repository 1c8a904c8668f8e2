# The rules `drbdpool ha-sync` writes through the real ha-manager CLI (PVE::CLI::ha_manager,
# PVE::API2::HA::Rules) are accepted, parsed and checked by the real PVE::HA::Rules, and in use.
use strict;
use warnings;

use Test::More;
use DrbdpoolHA;

my $repo_bin = "$ENV{DRBDPOOL_BIN}";

sub nodes_of {
    my ($checked, $sid) = @_;
    my $na = $checked->{compiled}->{'node-affinity'}->{$sid} or return undef;
    return join(',', map { "$_:$na->{nodes}->{$_}->{priority}" } sort keys %{ $na->{nodes} });
}

subtest '2 nodes, a guest with several disks, a container' => sub {
    my $c = new_cluster(
        nodes => [qw(pve1 pve2)],
        guests => { 'vm:100' => 'pve1', 'ct:101' => 'pve2', 'vm:102' => 'pve1' },
        disks => {
            'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2)], 'vm-100-disk-1' => [qw(pve2 pve1)],
                          'vm-100-disk-2' => [qw(pve1 pve2)] },
            'ct:101' => { 'vm-101-disk-0' => [qw(pve2 pve1)] },
        },
    );
    my $out = $c->must_sync();
    like($out, qr/^added\s+drbdpool-vm100$/m, 'rule for the VM added');
    like($out, qr/^added\s+drbdpool-ct101$/m, 'rule for the container added');
    unlike($out, qr/vm102/, 'vm:102 has no drbdpool disk: no rule');
    is_deeply($c->ha_manager_calls, [
        "rules add node-affinity drbdpool-ct101 --resources ct:101 --nodes pve1,pve2 --strict 1 --comment managed by drbdpool: nodes holding good replicas of this guest's disks",
        "rules add node-affinity drbdpool-vm100 --resources vm:100 --nodes pve1,pve2 --strict 1 --comment managed by drbdpool: nodes holding good replicas of this guest's disks",
    ], 'the argv drbdpool ran, accepted by the real API schema');
    my $ck = $c->check_rules();
    is_deeply($ck->{errors}, {}, 'the real checker finds no conflict');
    is(nodes_of($ck, 'vm:100'), 'pve1:0,pve2:0', 'compiled: vm:100 only on its replica nodes');
    is(nodes_of($ck, 'ct:101'), 'pve1:0,pve2:0', 'compiled: ct:101 only on its replica nodes');
    is_deeply($c->rule_states, { 'drbdpool-vm100' => 'in use', 'drbdpool-ct101' => 'in use' },
        'ha-manager rules config: in use');
    like($c->must_sync(), qr/^unchanged\s+drbdpool-vm100$/m, 'a second sync changes nothing');
    is(scalar(grep { /^rules (add|set|remove)/ } @{ $c->ha_manager_calls }), 2, 'and changes no rule');
};

subtest '3 nodes, 2 replicas; disks of one guest on different node pairs' => sub {
    my $c = new_cluster(
        nodes => [qw(pve1 pve2 pve3)],
        guests => { 'vm:100' => 'pve1', 'vm:101' => 'pve3', 'vm:102' => 'pve2' },
        disks => {
            'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2)] },
            'vm:101' => { 'vm-101-disk-0' => [qw(pve3 pve2)] },
            'vm:102' => { 'vm-102-disk-0' => [qw(pve1 pve2)], 'vm-102-disk-1' => [qw(pve2 pve3)] },
        },
    );
    $c->must_sync();
    my $ck = $c->check_rules();
    is_deeply($ck->{errors}, {}, 'no conflict');
    is(nodes_of($ck, 'vm:100'), 'pve1:0,pve2:0', 'vm:100: pve3 holds no replica and is not allowed (strict)');
    is(nodes_of($ck, 'vm:101'), 'pve2:0,pve3:0', 'vm:101 on its pair');
    is(nodes_of($ck, 'vm:102'), 'pve2:0', 'vm:102: only pve2 holds both disks');
    is_deeply([sort values %{ $c->rule_states }], ['in use', 'in use', 'in use'], 'all in use');
};

subtest 'a replica turns Outdated: set; the guest leaves HA: remove; both through the real CLI' => sub {
    my $c = new_cluster(
        nodes => [qw(pve1 pve2 pve3)],
        guests => { 'vm:100' => 'pve1' },
        disks => { 'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2 pve3)], 'vm-100-disk-1' => [qw(pve1 pve2 pve3)] } },
    );
    $c->must_sync();
    $c->set_disk('pve2', 'vm-100-disk-1', 'Outdated');
    like($c->must_sync(), qr/^changed\s+drbdpool-vm100$/m, 'one outdated disk changes the rule');
    is(nodes_of($c->check_rules(), 'vm:100'), 'pve1:0,pve3:0', 'pve2 left out');
    $c->set_disk('pve2', 'vm-100-disk-1', 'UpToDate');
    $c->mark_outdated('vm-100-disk-0', 'pve3'); # fence-peer's record, though pve3 still says UpToDate
    $c->must_sync();
    is(nodes_of($c->check_rules(), 'vm:100'), 'pve1:0,pve2:0', 'a fence-peer mark leaves the node out');
    DrbdpoolHA::write_file("$c->{pve}/ha/resources.cfg", '');
    like($c->must_sync(), qr/^removed\s+drbdpool-vm100$/m, 'rule removed with the guest');
    is($c->rules_cfg, '', 'rules.cfg empty');
    is_deeply([grep { /^rules (set|remove)/ } @{ $c->ha_manager_calls }], [
        'rules set node-affinity drbdpool-vm100 --resources vm:100 --nodes pve1,pve3 --strict 1',
        'rules set node-affinity drbdpool-vm100 --resources vm:100 --nodes pve1,pve2 --strict 1',
        'rules remove drbdpool-vm100',
    ], 'set and remove argv');
};

subtest 'the real CLI can say no: the tier would catch a renamed option or a refused rule' => sub {
    my $c = new_cluster(nodes => [qw(pve1 pve2)], guests => { 'vm:100' => 'pve1' },
        disks => { 'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2)] } });
    local $ENV{DRBDPOOL_FAKE_PVE} = $c->{pve};
    my $bin = "$ENV{PWD}/tests/ha/bin/ha-manager";
    my $out = `'$bin' rules add node-affinity my-rule --resources vm:100 --node-list pve1 2>&1`;
    isnt($?, 0, 'an option the schema does not know is refused');
    like($out, qr/Unknown option: node-list/, 'with the schema parser\'s message');
    $out = `'$bin' rules add node-affinity my-rule --resources vm:999 --nodes pve1 2>&1`;
    isnt($?, 0, 'a guest HA does not manage is refused');
    like($out, qr/cannot use unmanaged resource/, 'by PVE::API2::HA::Rules');
    # Without quorum `rules add` fails (check_cfs_quorum): drbdpool reports it and fails.
    DrbdpoolHA::write_file("$c->{pve}/.noquorum", '');
    my ($rc, $sync) = $c->ha_sync();
    isnt($rc, 0, 'ha-sync fails when ha-manager does');
    like($sync, qr/updating HA rules:.*no quorum/s, 'and says why');
};

done_testing();
