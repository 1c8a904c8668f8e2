# The real CRM and LRM (PVE::HA::Sim::TestHardware, as upstream's src/test/ha-tester.pl runs them) on
# the rules `drbdpool ha-sync` wrote: where does HA recover a guest when its node fails?
use strict;
use warnings;

use Test::More;
use DrbdpoolHA;

my @on3 = ("power pve1 on", "power pve2 on", "power pve3 on");

# A link cut: DRBD marks pve2's replica Outdated and the fence-peer handler records it (what
# drbdpool's agent and fence-peer write to the store); then one ha-sync run.
my %cut = (cut => sub { my ($c) = @_;
    $c->set_disk('pve2', $_, 'Outdated') for grep { exists $c->{volumes}->{$_} } qw(vm-100-disk-0 vm-100-disk-1);
    $c->mark_outdated($_, 'pve2') for grep { exists $c->{volumes}->{$_} } qw(vm-100-disk-0 vm-100-disk-1) });

subtest '2 nodes, both UpToDate: pve1 fails, the guest is recovered on pve2' => sub {
    my $c = new_cluster(nodes => [qw(pve1 pve2)], guests => { 'vm:100' => 'pve1' },
        disks => { 'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2)], 'vm-100-disk-1' => [qw(pve2 pve1)] } });
    $c->must_sync;
    my $log = $c->simulate(cmdlist => [["power pve1 on", "power pve2 on"], ["network pve1 off"]]);
    ok(@{ lines($log, qr/recover service 'vm:100' from fenced node 'pve1' to node 'pve2'/) }, 'recovered to pve2')
        or diag(join("\n", @$log));
    is_deeply(lrm_starts($log, 'vm:100'), [qw(pve1 pve2)], 'started on pve1, then on pve2');
};

subtest '2 nodes, pve2 Outdated after a link cut: pve1 fails, HA waits for pve1' => sub {
    my $c = new_cluster(nodes => [qw(pve1 pve2)], guests => { 'vm:100' => 'pve1' },
        disks => { 'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2)] } });
    $c->must_sync;
    my $log = $c->simulate(hooks => \%cut,
        cmdlist => [["power pve1 on", "power pve2 on"], ["drbdpool cut"], ["network pve1 off"], [], [],
            ["power pve1 on", "network pve1 on"]]);
    ok(@{ lines($log, qr/drbdpool: ha-sync: changed\s+drbdpool-vm100/) }, 'the cut changed the rule');
    ok(@{ lines($log, qr/recovering service 'vm:100' from fenced node 'pve1' failed, no recovery node found/) },
        'no recovery node while only the outdated pve2 is up') or diag(join("\n", @$log));
    ok(!grep({ $_ eq 'pve2' } @{ lrm_starts($log, 'vm:100') }), 'never started on the outdated pve2');
    is_deeply(lrm_starts($log, 'vm:100'), [qw(pve1 pve1)], 'started again on pve1 when it is back');
    # The earlier rule (UpToDate at priority 2, the rest at 1) for the same moment: HA recovers to
    # pve2, where activation refuses the outdated replica.
    my $old = "node-affinity: drbdpool-vm100\n\tresources vm:100\n\tnodes pve1:2,pve2:1\n\tstrict 1\n";
    $log = $c->simulate(rules => $old, cmdlist => [["power pve1 on", "power pve2 on"], ["network pve1 off"]]);
    ok(@{ lines($log, qr/recover service 'vm:100' from fenced node 'pve1' to node 'pve2'/) },
        'with priorities instead, HA recovers to the outdated pve2');
};

subtest '3 nodes, 2 replicas: recovery to the replica node, never to pve3' => sub {
    my $c = new_cluster(nodes => [qw(pve1 pve2 pve3)], guests => { 'vm:100' => 'pve1', 'vm:101' => 'pve1' },
        disks => { 'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2)] },
                   'vm:101' => { 'vm-101-disk-0' => [qw(pve1 pve2)], 'vm-101-disk-1' => [qw(pve1 pve2)] } });
    $c->must_sync;
    my $log = $c->simulate(cmdlist => [[@on3], ["network pve1 off"]]);
    for my $sid (qw(vm:100 vm:101)) {
        ok(@{ lines($log, qr/recover service '$sid' from fenced node 'pve1' to node 'pve2'/) }, "$sid recovered to pve2");
    }
    # pve2 Outdated, then pve1 fails: the guest waits; pve3 has no replica (diskless is not wired).
    $log = $c->simulate(hooks => \%cut, cmdlist => [[@on3], ["drbdpool cut"], ["network pve1 off"]]);
    ok(@{ lines($log, qr/recovering service 'vm:100' from fenced node 'pve1' failed, no recovery node found/) },
        'pve2 outdated and pve1 down: no recovery node') or diag(join("\n", @$log));
    ok(!grep({ $_ ne 'pve1' } @{ lrm_starts($log, 'vm:100') }), 'never started on pve2 or pve3');
    # A non-strict rule would send it elsewhere (why strict).
    my $loose = $c->rules_cfg =~ s/\tstrict 1/\tstrict 0/gr;
    $log = $c->simulate(rules => $loose, cmdlist => [[@on3], ["network pve1 off"]]);
    ok(@{ lines($log, qr/recover service 'vm:100' from fenced node 'pve1' to node '(pve2|pve3)'/) },
        'with strict 0 and pve1 down, HA recovers vm:100 to a node without a good replica');
};

subtest '3 nodes, 3 replicas: pve2 Outdated after a link cut, the rule follows, recovery goes to pve3' => sub {
    my $c = new_cluster(nodes => [qw(pve1 pve2 pve3)], guests => { 'vm:100' => 'pve1' },
        disks => { 'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2 pve3)], 'vm-100-disk-1' => [qw(pve1 pve2 pve3)] } });
    $c->must_sync;
    my $log = $c->simulate(hooks => \%cut, cmdlist => [[@on3], ["drbdpool cut"], ["network pve1 off"]]);
    my ($cut_at) = map { /^\S+\s+(\d+)/ } @{ lines($log, qr/cmdlist: execute drbdpool cut/) };
    my ($sync_at) = map { /^\S+\s+(\d+)/ } @{ lines($log, qr/drbdpool: ha-sync: changed\s+drbdpool-vm100/) };
    ok(defined($cut_at) && defined($sync_at) && $sync_at == $cut_at, "rule changed by the one ha-sync after the cut (t=$cut_at)");
    ok(@{ lines($log, qr/recover service 'vm:100' from fenced node 'pve1' to node 'pve3'/) }, 'recovered to pve3')
        or diag(join("\n", @$log));
    ok(!grep({ $_ eq 'pve2' } @{ lrm_starts($log, 'vm:100') }), 'never to the outdated pve2');
    # The guest runs on pve2 when pve2's replica turns Outdated: HA moves it to a good node.
    my $c2 = new_cluster(nodes => [qw(pve1 pve2 pve3)], guests => { 'vm:100' => 'pve2' },
        disks => { 'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2 pve3)] } });
    $c2->must_sync;
    $log = $c2->simulate(hooks => { bad => sub { $_[0]->set_disk('pve2', 'vm-100-disk-0', 'Diskless') } },
        cmdlist => [[@on3], ["drbdpool bad"]]);
    my $placed = placements($log, 'vm:100');
    ok(@$placed >= 2 && $placed->[-1] ne 'pve2', "guest moved off pve2 once its disk failed (to $placed->[-1])")
        or diag(join("\n", @$log));
    ok(@{ lines($log, qr/service 'vm:100': state changed from 'started' to 'migrate'/) }, 'by a live migration');
};

done_testing();
