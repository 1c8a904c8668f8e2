package DrbdpoolHA;

# Helpers of the HA tier (tests/ha/t, run by scripts/test-ha.sh): a drbdpool test store with volumes,
# replicas and observed node states; `drbdpool ha-sync` (the real binary, $DRBDPOOL_BIN) writing its rules
# through the real ha-manager CLI (tests/ha/bin/ha-manager); the real PVE::HA::Rules checker on the
# result; and the real CRM/LRM (PVE::HA::Sim::TestHardware, as upstream's src/test/ha-tester.pl runs
# it) on those rules, with "drbdpool <hook>" commands in the command list that change the store and
# run ha-sync again while the simulation runs.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path);
use File::Temp qw(tempdir);
use JSON;

# Registers the sim's resource types (vm, ct) and the rule plugins (node-affinity,
# resource-affinity) exactly as upstream's simulator does; the checker below uses that registration.
use PVE::HA::Sim::TestHardware;
use PVE::HA::Rules;

use base 'Exporter';
our @EXPORT = qw(new_cluster placements lrm_starts lines);

my $repo = abs_path(dirname(__FILE__) . "/../../..");

my $json = JSON->new->canonical->pretty;

sub write_file {
    my ($path, $data) = @_;
    make_path(dirname($path));
    open(my $fh, '>', $path) or die "cannot write $path: $!\n";
    print $fh $data;
    close($fh) or die "cannot write $path: $!\n";
}

sub read_file {
    my ($path) = @_;
    open(my $fh, '<', $path) or return undef;
    local $/;
    return <$fh>;
}

# new_cluster(nodes => [..], guests => { 'vm:100' => 'pve1', ... },
#             disks => { 'vm:100' => { 'vm-100-disk-0' => ['pve1', 'pve2'], ... } },
#             disk  => { pve2 => { 'vm-100-disk-0' => 'Outdated' } }   # observed; default UpToDate
#             rules => "admin rules.cfg text")
sub new_cluster {
    my (%o) = @_;
    my $dir = tempdir("drbdpool-ha.XXXXXX", TMPDIR => 1, CLEANUP => 1);
    my $self = bless { dir => $dir, store => "$dir/store", pve => "$dir/pve", %o }, __PACKAGE__;
    $self->{disk} //= {};
    $self->{outdated} //= {};
    make_path("$self->{store}/$_") for qw(nodes volumes/dp state);
    make_path("$self->{pve}/ha");
    my $minor = 1000;
    for my $sid (sort keys %{ $o{disks} }) {
        my ($vmid) = $sid =~ /:(\d+)$/ or die "bad sid $sid\n";
        for my $volname (sort keys %{ $o{disks}->{$sid} }) {
            my $nodes = $o{disks}->{$sid}->{$volname};
            $self->{volumes}->{$volname} = {
                format => 1, storeid => 'dp', volname => $volname, vmid => $vmid + 0,
                resource => "dp-$volname", size_kib => 1048576, minor => $minor, port => 7000 + $minor - 1000,
                replicas => [map { { node => $nodes->[$_], node_id => $_ } } 0 .. $#$nodes],
                backend => { kind => 'lvmthin', vg => 'pve', thinpool => 'data' },
                secret => 'test', state => 'ready', outdated => [], created => 1, generation => 1,
            };
            $minor++;
        }
    }
    my $res = '';
    my $vmlist = {};
    for my $sid (sort keys %{ $o{guests} }) {
        my ($type, $vmid) = split /:/, $sid;
        $res .= "$type: $vmid\n\tstate started\n\n";
        $vmlist->{$vmid} = { node => $o{guests}->{$sid}, type => $type eq 'vm' ? 'qemu' : 'lxc' };
    }
    write_file("$self->{pve}/ha/resources.cfg", $res);
    write_file("$self->{pve}/ha/rules.cfg", $o{rules} // '');
    write_file("$self->{pve}/ha/manager_status",
        encode_json({ node_status => { map { $_ => 'online' } @{ $o{nodes} } } }));
    write_file("$self->{pve}/.members", encode_json({ nodes => $o{nodes}, vmlist => $vmlist }));
    $self->write_store();
    return $self;
}

# Observed disk state of a node's replica (what its agent publishes), and fence-peer's outdated mark.
sub set_disk {
    my ($self, $node, $volname, $disk) = @_;
    $self->{disk}->{$node}->{$volname} = $disk;
    $self->write_store();
}

sub mark_outdated {
    my ($self, $volname, $node) = @_;
    push @{ $self->{volumes}->{$volname}->{outdated} }, $node;
    $self->{volumes}->{$volname}->{generation}++;
    $self->write_store();
}

sub write_store {
    my ($self) = @_;
    my $states = {};
    for my $v (values %{ $self->{volumes} }) {
        write_file("$self->{store}/volumes/dp/$v->{volname}.json", $json->encode($v));
        for my $r (@{ $v->{replicas} }) {
            my $disk = $self->{disk}->{ $r->{node} }->{ $v->{volname} } // 'UpToDate';
            $states->{ $r->{node} }->{ $v->{resource} } =
                { ready => JSON::true, generation => $v->{generation}, role => 'Secondary', disk => $disk };
        }
    }
    for my $node (@{ $self->{nodes} }) {
        write_file("$self->{store}/state/$node.json",
            $json->encode({ format => 1, node => $node, updated => time(), volumes => $states->{$node} // {} }));
    }
}

# Runs `drbdpool ha-sync` (the real binary) with the real ha-manager CLI on PATH; returns (exit code, output).
sub ha_sync {
    my ($self) = @_;
    my $bin = $ENV{DRBDPOOL_BIN} or die "DRBDPOOL_BIN is not set (scripts/test-ha.sh sets it)\n";
    local $ENV{DRBDPOOL_HA_DIR} = "$self->{pve}/ha";
    local $ENV{DRBDPOOL_HA_MANAGER} = "ha-manager";
    local $ENV{PATH} = "$repo/tests/ha/bin:$ENV{PATH}";
    local $ENV{DRBDPOOL_FAKE_PVE} = $self->{pve};
    my $out = `'$bin' --store '$self->{store}' ha-sync 2>&1`;
    my $rc = $? >> 8;
    $out =~ s/^setlogsock\(\).*\n//mg; # PVE::SafeSyslog finds no syslog socket here
    return ($rc, $out);
}

sub must_sync {
    my ($self) = @_;
    my ($rc, $out) = $self->ha_sync();
    die "drbdpool ha-sync failed (exit $rc):\n$out" if $rc != 0;
    return $out;
}

sub rules_cfg { my ($self) = @_; return read_file("$self->{pve}/ha/rules.cfg") // '' }

# The argv of every ha-manager call so far (joined with spaces), as the wrapper logged them.
sub ha_manager_calls {
    my ($self) = @_;
    my $log = read_file("$self->{pve}/.ha-manager.log") // '';
    return [map { join(' ', split /\x1f/) } split /\n/, $log];
}

# The real checker on rules.cfg: { errors => {ruleid => {opt => [msg]}}, compiled => {...}, rules => {...} }.
sub check_rules {
    my ($self, $text) = @_;
    $text //= $self->rules_cfg();
    my $rules = PVE::HA::Rules->parse_config("rules.cfg", $text);
    PVE::HA::Rules->set_rule_defaults($_) for values %{ $rules->{ids} };
    my $errors = PVE::HA::Rules->check_feasibility($rules, $self->{nodes});
    my $messages = PVE::HA::Rules->transform($rules, $self->{nodes});
    my $compiled = PVE::HA::Rules->compile($rules, $self->{nodes});
    return { errors => $errors, messages => $messages, compiled => $compiled, rules => $rules };
}

# `ha-manager rules config --output-format json` through the real CLI: { ruleid => state }.
sub rule_states {
    my ($self) = @_;
    local $ENV{DRBDPOOL_FAKE_PVE} = $self->{pve};
    my $out = `'$repo/tests/ha/bin/ha-manager' rules config --output-format json 2>/dev/null`;
    die "ha-manager rules config failed (exit $?)\n" if $? != 0;
    return { map { $_->{rule} => $_->{state} } @{ decode_json($out) } };
}

# Runs the real CRM/LRM simulation. cmdlist: list of lists of commands (ha-tester's format);
# "drbdpool NAME" calls $hooks->{NAME}->($cluster) and then feeds the new rules.cfg to the running sim.
# Returns the simulation log lines.
sub simulate {
    my ($self, %o) = @_;
    my $t = "$self->{dir}/sim-" . ++$self->{sims};
    make_path($t);
    write_file("$t/cmdlist", encode_json($o{cmdlist}));
    my $hw_status = { map { $_ => { power => 'off', network => 'off' } } @{ $self->{nodes} } };
    # A 2-node drbdpool cluster has a QDevice as its third vote (README). The simulator counts
    # quorum over its hardware entries, so the QDevice is an entry that is on from the start and
    # is never powered on by a command: no CRM or LRM ever runs there.
    $hw_status->{qdevice} = { power => 'on', network => 'on' } if $o{qdevice} // @{ $self->{nodes} } == 2;
    write_file("$t/hardware_status", encode_json($hw_status));
    write_file("$t/manager_status", "{}");
    write_file("$t/service_config",
        encode_json({ map { $_ => { node => $self->{guests}->{$_}, state => 'started' } } keys %{ $self->{guests} } }));
    write_file("$t/rules_config", $self->rules_cfg());
    write_file("$t/datacenter.cfg", encode_json($o{datacenter})) if $o{datacenter};
    write_file("$t/rules_config", $o{rules}) if defined($o{rules}); # a hand-made contrast
    my $hw = DrbdpoolHA::Sim->new($t);
    $hw->{drbdpool} = { cluster => $self, hooks => $o{hooks} // {} };
    open(my $saved, '>&', \*STDOUT) or die "cannot dup STDOUT: $!\n";
    open(STDOUT, '>', '/dev/null') or die "cannot silence STDOUT: $!\n";
    eval { $hw->run() };
    my $err = $@;
    open(STDOUT, '>&', $saved) or die "cannot restore STDOUT: $!\n";
    die "simulation failed: $err" if $err;
    my $log = read_file("$t/status/log") // die "no simulation log in $t/status\n";
    return [split /\n/, $log];
}

# Nodes the CRM placed $sid on, in order ("... to 'started'  (node = X)" lines of the sim log).
sub placements {
    my ($log, $sid) = @_;
    return [map { /to 'started'\s+\(node = (\S+)\)/ ? $1 : () } grep { /service '\Q$sid\E': state changed/ } @$log];
}

# Nodes whose LRM started $sid ("pveX/lrm: starting service vm:100").
sub lrm_starts {
    my ($log, $sid) = @_;
    return [map { m!^\S+\s+\d+\s+(\S+)/lrm: starting service \Q$sid\E$! ? $1 : () } @$log];
}

# Log lines matching $re.
sub lines {
    my ($log, $re) = @_;
    return [grep { $_ =~ $re } @$log];
}

package DrbdpoolHA::Sim;

# Upstream's test hardware, plus one command: "drbdpool NAME" (see DrbdpoolHA::simulate).

use strict;
use warnings;

use base qw(PVE::HA::Sim::TestHardware);

sub sim_hardware_cmd {
    my ($self, $cmdstr, $logid) = @_;
    if ($cmdstr =~ m/^drbdpool\s+(\S+)\s*$/) {
        my $name = $1;
        my $d = $self->{drbdpool};
        $self->log('info', "execute $cmdstr", 'cmdlist');
        my $hook = $d->{hooks}->{$name} or die "no drbdpool hook '$name'\n";
        $hook->($d->{cluster});
        my $out = $d->{cluster}->must_sync();
        $self->log('info', "ha-sync: $_", 'drbdpool') for split /\n/, $out;
        # What the CRM reads each round (PVE::HA::Sim::Hardware::read_rules_config).
        DrbdpoolHA::write_file($self->statusdir() . "/rules_config", $d->{cluster}->rules_cfg());
        return;
    }
    return $self->SUPER::sim_hardware_cmd($cmdstr, $logid);
}

1;
