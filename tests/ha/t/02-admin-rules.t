# drbdpool's rules next to an admin's own rules, judged by the real PVE::HA::Rules checker
# (check_feasibility, which `ha-manager rules config` shows as "ignored (conflicts)", and which the
# CRM's transform drops). Also the earlier design (one rule per guest, UpToDate nodes at priority 2,
# the others at 1), to show what the checker does with it.
use strict;
use warnings;

use Test::More;
use DrbdpoolHA;

my %three = (
    nodes => [qw(pve1 pve2 pve3)],
    guests => { 'vm:100' => 'pve1', 'vm:101' => 'pve2', 'vm:102' => 'pve1', 'vm:200' => 'pve3' },
    disks => {
        'vm:100' => { 'vm-100-disk-0' => [qw(pve1 pve2)], 'vm-100-disk-1' => [qw(pve1 pve2)] },
        'vm:101' => { 'vm-101-disk-0' => [qw(pve2 pve1)] },
        'vm:102' => { 'vm-102-disk-0' => [qw(pve1 pve2)] },
    },
);

sub states_ok {
    my ($c, $name) = @_;
    my $st = $c->rule_states;
    my @bad = grep { $st->{$_} ne 'in use' } sort keys %$st;
    ok(!@bad && %$st, "$name: every rule in use") or diag(explain($st));
    is_deeply($c->check_rules->{errors}, {}, "$name: the checker finds no conflict");
}

subtest 'node-affinity rule for another guest' => sub {
    my $c = new_cluster(%three, rules => "node-affinity: pin-200\n\tresources vm:200\n\tnodes pve3\n\tstrict 1\n");
    like($c->must_sync, qr/^added\s+drbdpool-vm100$/m, 'drbdpool adds its rules');
    states_ok($c, 'with pin-200');
};

subtest 'separate (negative) set of drbdpool guests' => sub {
    my $c = new_cluster(%three,
        rules => "resource-affinity: apart\n\tresources vm:100,vm:101\n\taffinity negative\n");
    $c->must_sync;
    states_ok($c, 'with apart');
    my $neg = $c->check_rules->{compiled}->{'resource-affinity'}->{negative};
    ok($neg->{'vm:100'}->{'vm:101'}, 'the separation is compiled in');
};

subtest 'separate set with fewer good nodes than guests: drbdpool writes none for them' => sub {
    my $c = new_cluster(%three,
        rules => "resource-affinity: apart3\n\tresources vm:100,vm:101,vm:102\n\taffinity negative\n");
    my $out = $c->must_sync;
    like($out, qr/conflict .*'apart3' keeps them apart, but only 2 node\(s\)/, 'reported');
    unlike($c->rules_cfg, qr/drbdpool-vm10[012]/, 'no drbdpool rule for the three');
    states_ok($c, 'apart3 alone');
    # What PVE would have done with drbdpool's three rules beside it.
    my $with = $c->rules_cfg . "\n" . join('', map {
        "node-affinity: drbdpool-vm$_\n\tresources vm:$_\n\tnodes pve1,pve2\n\tstrict 1\n\n" } 100 .. 102);
    my $err = $c->check_rules($with)->{errors};
    is_deeply([sort keys %$err], [qw(apart3 drbdpool-vm100 drbdpool-vm101 drbdpool-vm102)],
        'with them, the checker would drop all four (no separation, no node restriction)');
};

subtest 'together (positive) set: one shared drbdpool rule on the common good nodes' => sub {
    my %o = %three;
    $o{disks} = { %{ $three{disks} }, 'vm:101' => { 'vm-101-disk-0' => [qw(pve2 pve3)] } };
    $o{nodes} = [qw(pve1 pve2 pve3)];
    my $c = new_cluster(%o, rules => "resource-affinity: with\n\tresources vm:100,vm:101\n\taffinity positive\n");
    $c->must_sync;
    like($c->rules_cfg, qr/node-affinity: drbdpool-vm100\n(\t.*\n)*\tresources vm:100,vm:101\n/, 'one rule for both');
    unlike($c->rules_cfg, qr/drbdpool-vm101/, 'none of its own for vm:101');
    states_ok($c, 'with "with"');
    my $na = $c->check_rules->{compiled}->{'node-affinity'};
    is_deeply([sort keys %{ $na->{'vm:101'}->{nodes} }], ['pve2'], 'both only on pve2, the one node with both');
    # One rule per guest, as drbdpool wrote before: the checker drops the set and both rules.
    my $old = "resource-affinity: with\n\tresources vm:100,vm:101\n\taffinity positive\n\n"
        . "node-affinity: drbdpool-vm100\n\tresources vm:100\n\tnodes pve1,pve2\n\tstrict 1\n\n"
        . "node-affinity: drbdpool-vm101\n\tresources vm:101\n\tnodes pve2,pve3\n\tstrict 1\n";
    is_deeply([sort keys %{ $c->check_rules($old)->{errors} }], [qw(drbdpool-vm100 drbdpool-vm101 with)],
        'one rule per guest in a together set: all three dropped');
    # The set changes: vm:101 leaves it -> back to one rule each, through the real CLI.
    DrbdpoolHA::write_file("$c->{pve}/ha/rules.cfg", $c->rules_cfg =~ s/(resource-affinity: with\n(?:\t.*\n)*?\tresources )vm:100,vm:101/${1}vm:100,vm:102/r);
    my $out = $c->must_sync;
    like($out, qr/^added\s+drbdpool-vm101$/m, 'vm:101 gets its own rule again');
    like($c->rules_cfg, qr/node-affinity: drbdpool-vm100\n(\t.*\n)*\tresources vm:100,vm:102\n/, 'vm:102 joins vm:100\'s');
    unlike($out, qr/^added\s+drbdpool-vm102$/m, 'not one of its own');
    states_ok($c, 'after the set changed');
};

subtest 'together set of guests sharing no good node: none, reported' => sub {
    my %o = %three;
    $o{disks} = { 'vm:100' => $three{disks}{'vm:100'}, 'vm:101' => { 'vm-101-disk-0' => [qw(pve3 pve2)] } };
    my $c = new_cluster(%o, rules => "resource-affinity: with\n\tresources vm:100,vm:101\n\taffinity positive\n");
    $c->set_disk('pve2', 'vm-101-disk-0', 'Inconsistent');
    like($c->must_sync, qr/conflict .*keep them together, but no node holds good replicas/, 'reported');
    unlike($c->rules_cfg, qr/drbdpool-/, 'no drbdpool rule');
    states_ok($c, 'the set alone');
};

subtest 'together set with an admin node-affinity rule for one of it: the admin rule wins' => sub {
    my $c = new_cluster(%three, rules => "resource-affinity: with\n\tresources vm:100,vm:200\n\taffinity positive\n\n"
        . "node-affinity: pin-200\n\tresources vm:200\n\tnodes pve1\n");
    like($c->must_sync, qr/conflict .*'pin-200' was written by hand/, 'reported');
    unlike($c->rules_cfg, qr/drbdpool-vm100/, 'no drbdpool rule for vm:100');
    like($c->rules_cfg, qr/drbdpool-vm101/, 'the others keep theirs');
    states_ok($c, 'with pin-200 in the set');
};

subtest 'admin node-affinity rule for a drbdpool guest: ours goes, theirs stays in use' => sub {
    my $c = new_cluster(%three);
    $c->must_sync;
    DrbdpoolHA::write_file("$c->{pve}/ha/rules.cfg",
        $c->rules_cfg . "node-affinity: my-100\n\tresources vm:100\n\tnodes pve1\n\tstrict 1\n");
    is_deeply([sort keys %{ $c->check_rules->{errors} }], [qw(drbdpool-vm100 my-100)],
        'both side by side: the checker drops both');
    my $out = $c->must_sync;
    like($out, qr/^removed\s+drbdpool-vm100$/m, 'drbdpool removes its rule');
    like($out, qr/conflict .*'my-100' was written by hand/, 'and reports the admin rule');
    states_ok($c, 'my-100 alone');
};

subtest 'several priorities next to any resource-affinity rule: the checker drops both (why one priority)' => sub {
    my $c = new_cluster(%three);
    my $old = "resource-affinity: apart\n\tresources vm:100,vm:101\n\taffinity negative\n\n"
        . "node-affinity: drbdpool-vm100\n\tresources vm:100\n\tnodes pve1:2,pve2:1\n\tstrict 1\n";
    my $ck = $c->check_rules($old);
    is_deeply([sort keys %{ $ck->{errors} }], [qw(apart drbdpool-vm100)], 'both dropped');
    like($ck->{errors}->{'drbdpool-vm100'}->{resources}->[0], qr/multiple priorities/, 'for the priorities');
    # drbdpool's rule for the same state (pve2 outdated): one node, one priority, kept.
    $c->set_disk('pve2', 'vm-100-disk-0', 'Outdated');
    DrbdpoolHA::write_file("$c->{pve}/ha/rules.cfg", "resource-affinity: apart\n\tresources vm:100,vm:101\n\taffinity negative\n");
    $c->must_sync;
    like($c->rules_cfg, qr/drbdpool-vm100\n(\t.*\n)*\tnodes pve1\n/, 'drbdpool lists pve1 only');
    states_ok($c, 'apart with an outdated replica');
};

done_testing();
