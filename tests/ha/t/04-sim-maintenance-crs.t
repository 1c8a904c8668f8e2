# Planned moves through the real CRM/LRM on drbdpool's rules: node maintenance, shutdown with the
# migrate policy, and the CRS of HA 5.2 (rebalance on start; the candidates of auto-rebalance).
use strict;
use warnings;

use Test::More;
use DrbdpoolHA;
use PVE::HA::Manager;
use PVE::HA::Usage::Basic;

my @on3 = ("power pve1 on", "power pve2 on", "power pve3 on");

sub three {
    return new_cluster(nodes => [qw(pve1 pve2 pve3)],
        guests => { 'vm:100' => 'pve1', 'vm:101' => 'pve1' },
        disks => { 'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2)], 'vm-100-disk-1' => [qw(pve1 pve2)] },
                   'vm:101' => { 'vm-101-disk-0' => [qw(pve1 pve3)] } });
}

subtest 'maintenance mode: guests migrate to their replica nodes' => sub {
    my $c = three();
    $c->must_sync;
    my $log = $c->simulate(cmdlist => [[@on3], ["crm pve1 enable-node-maintenance"], ["crm pve1 disable-node-maintenance"]]);
    like(join("\n", @$log), qr/migrate service 'vm:100' to node 'pve2'/, 'vm:100 to pve2') or diag(join("\n", @$log));
    like(join("\n", @$log), qr/migrate service 'vm:101' to node 'pve3'/, 'vm:101 to pve3');
    is(placements($log, 'vm:100')->[1], 'pve2', 'vm:100 placed on pve2');
    ok(!grep({ $_ eq 'pve3' } @{ placements($log, 'vm:100') }), 'vm:100 never on pve3');
    ok(!grep({ $_ eq 'pve2' } @{ placements($log, 'vm:101') }), 'vm:101 never on pve2');
};

subtest 'maintenance mode while the other replica is Outdated: the guest stays' => sub {
    my $c = three();
    $c->set_disk('pve2', 'vm-100-disk-0', 'Outdated');
    $c->must_sync;
    my $log = $c->simulate(cmdlist => [[@on3], ["crm pve1 enable-node-maintenance"]]);
    ok(!grep({ $_ ne 'pve1' } @{ placements($log, 'vm:100') }), 'vm:100 stays on pve1')
        or diag(join("\n", @$log));
    like(join("\n", @$log), qr/migrate service 'vm:101' to node 'pve3'/, 'vm:101 still goes to pve3');
};

subtest 'shutdown with the migrate policy' => sub {
    my $c = three();
    $c->must_sync;
    my $log = $c->simulate(datacenter => { ha => { shutdown_policy => 'migrate' } },
        cmdlist => [[@on3], ["shutdown pve1"]]);
    like(join("\n", @$log), qr/got shutdown request with shutdown policy 'migrate'/, 'policy migrate')
        or diag(join("\n", @$log));
    is(placements($log, 'vm:100')->[-1], 'pve2', 'vm:100 ends on pve2');
    is(placements($log, 'vm:101')->[-1], 'pve3', 'vm:101 ends on pve3');
};

subtest 'CRS: rebalance on start keeps every guest on its replica nodes' => sub {
    my %g = map { ("vm:$_" => 'pve1') } 100 .. 105;
    my $c = new_cluster(nodes => [qw(pve1 pve2 pve3)], guests => \%g,
        disks => { map { ("vm:$_" => { "vm-$_-disk-0" => [qw(pve1 pve2)] }) } 100 .. 105 });
    $c->must_sync;
    my $log = $c->simulate(datacenter => { crs => { 'ha-rebalance-on-start' => 1 } }, cmdlist => [[@on3]]);
    my @moved = @{ lines($log, qr/re-balance selected new node/) };
    ok(@moved, scalar(@moved) . ' guests moved at start') or diag(join("\n", @$log));
    for my $sid (sort keys %g) {
        my $p = placements($log, $sid);
        ok(!grep({ $_ eq 'pve3' } @$p), "$sid never on pve3 (placed on @$p)");
    }
};

subtest 'CRS: auto-rebalance draws its moves only from the nodes drbdpool allows' => sub {
    my $c = new_cluster(nodes => [qw(pve1 pve2 pve3)],
        guests => { 'vm:100' => 'pve1', 'vm:101' => 'pve1', 'vm:102' => 'pve1' },
        disks => { 'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2)] },
                   'vm:101' => { 'vm-101-disk-0' => [qw(pve1 pve2 pve3)] } });
    $c->set_disk('pve3', 'vm-101-disk-0', 'Inconsistent');
    $c->must_sync;
    # The auto-rebalance of HA 5.2 scores with the static or dynamic scheduler, which is Rust
    # (PVE::RS::ResourceScheduling, libpve-rs-perl, not among the third-party sources): the real
    # manager falls back to 'basic', which never rebalances. Shown, then the candidate list that
    # load_balance() hands to either scheduler, computed by the real manager on drbdpool's rules.
    my $log = $c->simulate(datacenter => { crs => { ha => 'static', 'ha-auto-rebalance' => 1 } }, cmdlist => [[@on3]]);
    ok(@{ lines($log, qr/fallback to 'basic' scheduler mode, init for 'static' failed/) }, 'static falls back here')
        or diag(join("\n", @$log));
    my $usage = PVE::HA::Usage::Basic->new(undef);
    $usage->add_node($_) for qw(pve1 pve2 pve3);
    my $mgr = bless {
        ss => { map { ("vm:$_" => { node => 'pve1', state => 'started' }) } 100 .. 102 },
        compiled_rules => $c->check_rules->{compiled},
        online_node_usage => $usage,
    }, 'PVE::HA::Manager';
    my %cand = map { $_->{leader} => join(',', @{ $_->{nodes} }) } @{ $mgr->get_resource_migration_candidates() };
    is($cand{'vm:100'}, 'pve2', 'vm:100 may move to pve2 only');
    is($cand{'vm:101'}, 'pve2', 'vm:101 not to pve3, whose replica is still syncing');
    is($cand{'vm:102'}, 'pve2,pve3', 'vm:102 (no drbdpool disk) anywhere');
};

done_testing();
