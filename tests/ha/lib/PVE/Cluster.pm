package PVE::Cluster;

# Stand-in for pve-cluster's PVE::Cluster, for the HA tier only (scripts/test-ha.sh).
#
# The real module talks to pmxcfs over PVE::IPCC (an XS module) and hard-codes /etc/pve, so it cannot
# run here. This one keeps the same function names and plays pmxcfs with a plain directory:
#   $ENV{DRBDPOOL_FAKE_PVE}/<file>      what /etc/pve/<file> would hold (ha/rules.cfg, ha/resources.cfg, ...)
#   $ENV{DRBDPOOL_FAKE_PVE}/.members    JSON {"nodes": [..], "vmlist": {vmid: {"node":..,"type":..}}}
#   $ENV{DRBDPOOL_FAKE_PVE}/.noquorum   present: check_cfs_quorum dies as the real one does without quorum
# Everything above it (PVE::HA::Config, PVE::HA::Rules, PVE::API2::HA::Rules, PVE::CLI::ha_manager,
# PVE::SectionConfig, PVE::JSONSchema) is the real, unpacked upstream code.

use strict;
use warnings;

use Fcntl qw(:flock);
use JSON;

use base 'Exporter';
our @EXPORT_OK = qw(cfs_register_file cfs_read_file cfs_write_file cfs_lock_file cfs_lock_domain);

my $file_info = {};

sub base {
    my $d = $ENV{DRBDPOOL_FAKE_PVE} or die "DRBDPOOL_FAKE_PVE is not set (the directory standing in for /etc/pve)\n";
    return $d;
}

sub members {
    my $f = base() . "/.members";
    return { nodes => [], vmlist => {} } if !-f $f;
    open(my $fh, '<', $f) or die "cannot read $f: $!\n";
    local $/;
    return decode_json(<$fh>);
}

sub base_dir { return base() }
sub auth_dir { return base() . "/priv" }

sub check_cfs_quorum {
    my ($noerr) = @_;
    my $ok = !-e base() . "/.noquorum";
    die "cluster not ready - no quorum?\n" if !$ok && !$noerr;
    return $ok;
}

sub check_cfs_is_mounted { return 1 }
sub cfs_update { return }

sub cfs_register_file {
    my ($filename, $parser, $writer) = @_;
    $file_info->{$filename} = { parser => $parser, writer => $writer };
}

sub cfs_read_file {
    my ($filename) = @_;
    my $info = $file_info->{$filename} or die "unknown file '$filename'\n";
    my $path = base() . "/$filename";
    my $raw;
    if (-f $path) {
        open(my $fh, '<', $path) or die "cannot read $path: $!\n";
        local $/;
        $raw = <$fh>;
    }
    return $info->{parser}->($filename, $raw);
}

sub cfs_write_file {
    my ($filename, $data) = @_;
    my $info = $file_info->{$filename} or die "unknown file '$filename'\n";
    die "file '$filename' has no writer\n" if !$info->{writer};
    my $raw = $info->{writer}->($filename, $data);
    my $path = base() . "/$filename";
    (my $dir = $path) =~ s!/[^/]+$!!;
    mkdir $dir if !-d $dir;
    open(my $fh, '>', "$path.tmp") or die "cannot write $path.tmp: $!\n";
    print $fh $raw;
    close($fh) or die "cannot write $path.tmp: $!\n";
    rename("$path.tmp", $path) or die "cannot rename $path.tmp: $!\n";
}

sub get_config {
    my ($path) = @_;
    my $f = base() . "/$path";
    return undef if !-f $f;
    open(my $fh, '<', $f) or die "cannot read $f: $!\n";
    local $/;
    return <$fh>;
}

# Like the real cfs_lock_*: runs $code under the lock, returns its result, leaves an error in $@.
my $cfs_lock = sub {
    my ($name, $code, @param) = @_;
    my $lock = base() . "/.lock-$name";
    open(my $fh, '>>', $lock) or die "cannot open $lock: $!\n";
    flock($fh, LOCK_EX) or die "cannot lock $lock: $!\n";
    my $res = eval { $code->(@param) };
    my $err = $@;
    close($fh);
    $@ = $err;
    return $res;
};

sub cfs_lock_domain {
    my ($domain, $timeout, $code, @param) = @_;
    return $cfs_lock->("domain-$domain", $code, @param);
}

sub cfs_lock_file {
    my ($filename, $timeout, $code, @param) = @_;
    (my $n = $filename) =~ s![/.]!_!g;
    return $cfs_lock->("file-$n", $code, @param);
}

sub get_vmlist { return { ids => members()->{vmlist} } }

sub get_nodelist { return [sort @{ members()->{nodes} }] }

sub get_members {
    return { map { $_ => { online => 1 } } @{ members()->{nodes} } };
}

sub check_node_exists {
    my ($nodename, $noerr) = @_;
    return 1 if grep { $_ eq $nodename } @{ members()->{nodes} };
    die "no such cluster node '$nodename'\n" if !$noerr;
    return undef;
}

sub get_node_kv { return {} }
sub get_guest_config_properties { return {} }
sub complete_migration_target { return [] }

1;
