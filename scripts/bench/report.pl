#!/usr/bin/perl
# Table of scripts/bench.sh results (JSON lines) with targets and pass/fail.
use strict;
use warnings;
use JSON::PP;

my %r;    # volumes -> label -> result
open(my $fh, '<', $ARGV[0]) or die "open $ARGV[0]: $!\n";
while (<$fh>) {
    my $j = decode_json($_);
    $r{ $j->{volumes} }{ $j->{label} } = $j;
}

# Median targets from the issue (ms), per volume count.
my %target = (
    status => { 1000 => 5, 10000 => 20 },
    path => { 1000 => 5, 10000 => 20 },
    list => { 10000 => 50 },
);
my $fail = 0;
my $f = sub { defined($_[0]) ? sprintf('%.2f', $_[0]) : '-' };

my $bare_floor = $r{0}{'floor-bare'};
printf "floor: static true via fork+exec from Rust: median %s ms, p99 %s ms\n\n", $f->($bare_floor->{median_ms}), $f->($bare_floor->{p99_ms})
    if $bare_floor;
print "| volumes | call | shim median | shim p99 | floor (shim exec path) | ratio | bare helper median | bare p99 | bare/floor | target (median) | pass |\n";
print "|--:|--|--:|--:|--:|--:|--:|--:|--:|--|--|\n";
for my $n (sort { $a <=> $b } grep { $_ > 0 } keys %r) {
    my $fl = $r{$n}{'floor-shim'};
    for my $m (qw(status path list activate)) {
        my $s = $r{$n}{"shim-$m"} or next;
        my $b = $r{$n}{"bare-$m"};
        my $t = $target{$m}{$n};
        my $pass = '';
        if (defined($t)) {
            my $ok = $s->{median_ms} < $t;
            $fail++ if !$ok;
            $pass = $ok ? 'PASS' : 'FAIL';
        }
        printf "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $n, $m eq 'activate' ? 'activate (sim DRBD, already Primary)' : $m,
            $f->($s->{median_ms}), $f->($s->{p99_ms}), $f->($fl && $fl->{median_ms}),
            $fl ? sprintf('%.1fx', $s->{median_ms} / $fl->{median_ms}) : '-',
            $f->($b && $b->{median_ms}), $f->($b && $b->{p99_ms}),
            ($b && $bare_floor) ? sprintf('%.1fx', $b->{median_ms} / $bare_floor->{median_ms}) : '-',
            defined($t) ? "< $t ms" : '-', $pass;
    }
}
# Activation O(1) in the number of volumes (issue 13): at 10,000 at most 1.5x its time at 100.
if (my ($lo, $hi) = map { $r{$_} && $r{$_}{'shim-activate'} } (100, 10000)) {
    if ($lo && $hi) {
        my $x = $hi->{median_ms} / $lo->{median_ms};
        my $ok = $x <= 1.5;
        $fail++ if !$ok;
        printf "\nactivate at 10,000 volumes against 100 (shim medians): %.2f / %.2f ms = %.2fx (target <= 1.5x) %s\n",
            $hi->{median_ms}, $lo->{median_ms}, $x, $ok ? 'PASS' : 'FAIL';
    }
}
print "\nfloor of `list` for one file per volume (read every document, no parsing, in one process): ";
print join(', ', map { "$_ vols: " . $f->($r{$_}{'floor-read-docs'}{median_ms}) . " ms" } grep { $r{$_}{'floor-read-docs'} } sort { $a <=> $b } keys %r), "\n";
print "floor (Perl fork+exec+waitpid of static true, same process): ";
print join(', ', map { "$_ vols: " . $f->($r{$_}{'floor-perl'}{median_ms}) . " ms" } grep { $r{$_}{'floor-perl'} } sort { $a <=> $b } keys %r), "\n";

print "\n| memory (1,000 volumes) | peak RSS | target | pass |\n|--|--:|--|--|\n";
for my $m (qw(status path list activate)) {
    my $b = $r{1000}{"bare-$m"} or next;
    printf "| plugin %s (max ru_maxrss over the calls) | %.1f MiB | - | |\n", $m, $b->{maxrss_kib} / 1024;
}
if (my $a = $r{1000}{agent}) {
    my $mib = $a->{vm_hwm_kib} / 1024;
    my $ok = $mib < 30;
    $fail++ if !$ok;
    printf "| agent, %d passes, %d replicas published (VmHWM) | %.1f MiB | < 30 MiB | %s |\n", $a->{passes}, $a->{volumes_published}, $mib, $ok ? 'PASS' : 'FAIL';
    printf "\nagent pass times (ms): %s\n", join(', ', map { sprintf('%.0f', $_) } @{ $a->{pass_ms} });
}
# tmpfs against the real pmxcfs (BENCH_PMXCFS=1), medians in ms; targets of issue 13 on pmxcfs.
my %ptarget = (
    'shim-status' => { 1000 => 5 }, 'shim-path' => { 1000 => 5 }, 'shim-list' => { 10000 => 50 },
    'cli-status' => { 1000 => 50 }, 'cli-volume-list' => { 1000 => 50 },
);
my @pn = sort { $a <=> $b } grep { grep { /^pmxcfs-/ } keys %{ $r{$_} } } keys %r;
if (@pn) {
    print "\n| volumes | call | tmpfs median | pmxcfs median | pmxcfs p99 | pmxcfs/tmpfs | target on pmxcfs (median) | pass |\n";
    print "|--:|--|--:|--:|--:|--:|--|--|\n";
    for my $n (@pn) {
        for my $l (qw(shim-status shim-path shim-list shim-activate bare-status bare-path bare-list bare-activate cli-status cli-volume-list floor-shim)) {
            my $p = $r{$n}{"pmxcfs-$l"} or next;
            my $t = $r{$n}{$l};
            my $g = $ptarget{$l}{$n};
            my $pass = '';
            if (defined($g)) {
                my $ok = $p->{median_ms} < $g;
                $fail++ if !$ok;
                $pass = $ok ? 'PASS' : 'FAIL';
            }
            printf "| %d | %s | %s | %s | %s | %s | %s | %s |\n", $n, $l, $f->($t && $t->{median_ms}), $f->($p->{median_ms}), $f->($p->{p99_ms}),
                $t ? sprintf('%.1fx', $p->{median_ms} / $t->{median_ms}) : '-', defined($g) ? "< $g ms" : '-', $pass;
        }
    }
}
if (my $a = $r{0}{'pmxcfs-alloc-writes'}) {
    printf "\none alloc on pmxcfs (agents running, traced with strace): %d changes under /etc/pve (%s), %.0f ms\n", $a->{changes},
        join(', ', map { "$_ $a->{kinds}{$_}" } sort keys %{ $a->{kinds} }), $a->{median_ms};
}
print "\n", ($fail ? "$fail target(s) missed\n" : "all targets met\n");
