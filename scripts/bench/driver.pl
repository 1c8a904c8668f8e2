#!/usr/bin/perl
# The benchmark's PVE side: one long-lived Perl process, as pvestatd/pvedaemon
# are, that loads PVE::Storage::Custom::DRBDPoolPlugin through the stand-in
# PVE::Storage loader and calls its methods many times, timing each call
# (Time::HiRes wall clock, fork+exec+reply included). Prints one JSON line per
# measurement. Used by scripts/bench.sh; a lab scenario can run it as is.
#
#   perl -I perl-shim -I perl-shim/t/lib scripts/bench/driver.pl \
#       --manifest DIR/manifest.json --floor /path/to/static-true \
#       [--count 200] [--warmup 20] [--methods status,path,list,activate,floor]
#
# Environment: DRBDPOOL_BIN (the helper), plus what the helper needs
# (DRBDPOOL_STORE, DRBDPOOL_DRBD=sim, DRBDPOOL_SIM_DIR, ...): passed through.

use strict;
use warnings;

use Getopt::Long;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time);

my %o = (count => 200, warmup => 20, methods => 'floor,status,path,list,activate');
GetOptions(\%o, 'manifest=s', 'floor=s', 'count=i', 'warmup=i', 'methods=s') or die "bad options\n";
die "--manifest is required\n" if !$o{manifest};

my $m = do {
    open(my $fh, '<', $o{manifest}) or die "open $o{manifest}: $!\n";
    local $/;
    decode_json(<$fh>);
};
my $sid = $m->{storeid};
$ENV{DRBDPOOL_NODE} = $m->{node};
$ENV{DRBDPOOL_STORE} = $m->{store};

use PVE::Storage;
my $text = "drbdpool: $sid\n";
for my $k (sort keys %{ $m->{scfg} }) {
    next if $k eq 'type';
    $text .= "\t$k $m->{scfg}->{$k}\n";
}
PVE::Storage::set_config_text($text);
my $scfg = PVE::Storage::config()->{ids}->{$sid} or die "storage $sid not in the stand-in config\n";
my $P = 'PVE::Storage::Custom::DRBDPoolPlugin';
$P->can('status') or die "the plugin did not load\n";

sub pct {
    my ($sorted, $p) = @_;
    my $k = int($p / 100 * @$sorted + 0.999999);
    $k = 1 if $k < 1;
    return $sorted->[$k - 1];
}

# Time $code->($i) --count times after --warmup calls; print a JSON line.
sub measure {
    my ($label, $code) = @_;
    $code->($_) for 0 .. $o{warmup} - 1;
    my @ms;
    for my $i (0 .. $o{count} - 1) {
        my $t = time();
        $code->($i);
        push @ms, (time() - $t) * 1000;
    }
    @ms = sort { $a <=> $b } @ms;
    print encode_json({ label => $label, n => scalar(@ms), median_ms => pct(\@ms, 50), p99_ms => pct(\@ms, 99),
        min_ms => $ms[0], max_ms => $ms[-1], volumes => $m->{volumes} }), "\n";
    return;
}

my @vols = @{ $m->{volnames} };
my @active = @{ $m->{active} };

my %bench = (
    # pvestatd: every 10 s per storage.
    status => sub {
        my @s = $P->status($sid, $scfg, {});
        die "status: not active\n" if !$s[3];
    },
    # Every volume PVE touches: qemu command line, backups, migrations.
    path => sub {
        my $p = $P->path($scfg, $vols[$_[0] % @vols], $sid);
        die "path: $p\n" if $p !~ m{^/dev/drbd\d+$};
    },
    # GUI content view, vzdump, rescan.
    list => sub {
        my $l = $P->list_images($sid, $scfg, undef, undef, {});
        die "list: " . scalar(@$l) . " volumes, expected $m->{volumes}\n" if @$l != $m->{volumes};
    },
    # qm start of a guest whose volume is already Primary here (sim DRBD).
    activate => sub {
        die "activate: no volume is active on $m->{node} (populate with --sim)\n" if !@active;
        $P->activate_volume($sid, $scfg, $active[$_[0] % @active], undef, {});
    },
);

for my $what (split(/,/, $o{methods})) {
    if ($what eq 'floor') {
        my $floor = $o{floor} or die "--floor is required for the floor measurement\n";
        # 1) The shim's own exec path (call_helper in DRBDPool/Helper.pm: pipes,
        #    fork, exec, select loop, waitpid) with a trivial static binary as the
        #    helper: it answers nothing, so call_helper dies after the exec, which
        #    is what we time.
        {
            local $ENV{DRBDPOOL_BIN} = $floor;
            measure('floor-shim', sub {
                eval { $P->status($sid, $scfg, {}) };
                die "floor: unexpected: $@" if $@ !~ m/without a reply/;
            });
        }
        # 2) Bare fork + exec + waitpid from this Perl process.
        measure('floor-perl', sub {
            my $pid = fork() // die "fork: $!\n";
            if (!$pid) {
                exec { $floor } $floor or POSIX::_exit(127);
            }
            waitpid($pid, 0);
            die "floor: exit $?\n" if $?;
        });
        next;
    }
    my $code = $bench{$what} or die "unknown measurement '$what'\n";
    measure("shim-$what", $code);
}
