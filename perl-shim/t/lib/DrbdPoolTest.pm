package DrbdPoolTest;

# Test support: a fake `drbdpool` helper written into a temp dir. It records
# every call (argv, request, selected env) to calls.jsonl and answers from
# replies.json (per method), else with defaults that behave like a tiny
# file-backed storage: volumes are files under <dir>/dev/.

use strict;
use warnings;

use Exporter 'import';
use File::Temp qw(tempdir);
use JSON::PP;

our @EXPORT_OK = qw(fake_setup set_reply calls last_call clear_calls storage_cfg_text);

my $FAKE = <<'PERL';
#!/usr/bin/perl
use strict;
use warnings;
use JSON::PP;

my $dir = $ENV{FAKE_DIR} or die "FAKE_DIR not set\n";
my ($sub, $method) = @ARGV;
my $raw = do { local $/; <STDIN> } // '';
my $req = eval { decode_json($raw) };

sub slurp { my ($f) = @_; open(my $fh, '<', $f) or return undef; local $/; my $s = <$fh>; close($fh); $s }

open(my $log, '>>', "$dir/calls.jsonl") or die "log: $!";
print $log JSON::PP->new->canonical->encode({
    argv => \@ARGV,
    request => $req,
    raw => defined($req) ? undef : $raw,
    env => { map { $_ => $ENV{$_} } grep { m/^(DRBDPOOL_|PVE_MIGRATED_FROM$)/ } keys %ENV },
}), "\n";
close($log);

my $replies = decode_json(slurp("$dir/replies.json") // '{}');
my $r = $replies->{$method};
if ($r) {
    print STDERR $r->{stderr_first} if defined($r->{stderr_first}); # before any action (STDERR is unbuffered)
    if (my $act = $r->{action}) {
        if ($act eq 'sleep') { sleep($r->{seconds}); }
        elsif ($act eq 'garbage') { print "this is not json\n"; exit($r->{exit} // 0); }
        elsif ($act eq 'exit') { print STDERR $r->{stderr} // ''; exit($r->{exit}); }
        elsif ($act eq 'raw') { print $r->{stdout}; exit($r->{exit} // 0); }
    }
    if (exists $r->{ok}) {
        print STDERR $r->{stderr} if defined($r->{stderr});
        print encode_json({ version => 1, ok => $r->{ok}, ($r->{ok} ? (result => $r->{result}) : (error => $r->{error})) });
        exit($r->{ok} ? 0 : ($r->{exit} // 1));
    }
}

# Defaults: a tiny file-backed volume store.
my $a = $req->{args} // {};
my $devdir = "$dir/dev";
mkdir $devdir;
my $res = {};
if ($method eq 'alloc') {
    my $name = $a->{name};
    if (!defined($name)) {
        my $i = 0;
        $i++ while -e "$devdir/vm-$a->{vmid}-disk-$i";
        $name = "vm-$a->{vmid}-disk-$i";
    }
    open(my $fh, '>', "$devdir/$name") or die;
    truncate($fh, $a->{size_kib} * 1024);
    close($fh);
    $res = { volname => $name };
} elsif ($method eq 'free') {
    unlink("$devdir/$a->{volname}");
} elsif ($method eq 'path' || $method eq 'activate') {
    $res = { path => "$devdir/$a->{volname}" };
} elsif ($method eq 'size') {
    $res = { size => (-s "$devdir/$a->{volname}") // 0 };
} elsif ($method eq 'list') {
    opendir(my $dh, $devdir);
    my @imgs = map { { volid => "$req->{storeid}:$_", format => 'raw', size => -s "$devdir/$_", vmid => (m/-(\d+)-/)[0],
        ctime => 1700000000 } }
        grep { m/^(vm|base)-\d+-/ } sort readdir($dh);
    $res = { volumes => \@imgs };
} elsif ($method eq 'status') {
    $res = { total => 1024 * 1024 * 1024, avail => 768 * 1024 * 1024, used => 256 * 1024 * 1024, active => JSON::PP::true };
} elsif ($method eq 'has_feature') {
    $res = { supported => ($a->{feature} eq 'copy' ? JSON::PP::true : JSON::PP::false) };
}
print encode_json({ version => 1, ok => JSON::PP::true, result => $res });
exit(0);
PERL

# Create a temp dir with the fake helper and point DRBDPOOL_BIN at it.
sub fake_setup {
    my $dir = tempdir(CLEANUP => 1);
    ($dir) = $dir =~ m{^(/[\w./-]+)$} or die "odd tempdir";
    my $bin = "$dir/drbdpool";
    open(my $fh, '>', $bin) or die "write $bin: $!";
    print $fh $FAKE;
    close($fh);
    chmod(0755, $bin) or die;
    $ENV{FAKE_DIR} = $dir;
    $ENV{DRBDPOOL_BIN} = $bin;
    return $dir;
}

sub set_reply {
    my ($dir, $method, $reply) = @_;
    my $file = "$dir/replies.json";
    my $all = {};
    if (open(my $fh, '<', $file)) {
        local $/;
        $all = decode_json(<$fh>);
        close($fh);
    }
    if (defined($reply)) {
        $all->{$method} = $reply;
    } else {
        delete $all->{$method};
    }
    open(my $out, '>', $file) or die;
    print $out encode_json($all);
    close($out);
    return;
}

sub calls {
    my ($dir) = @_;
    open(my $fh, '<', "$dir/calls.jsonl") or return [];
    my @c = map { decode_json($_) } grep { m/\S/ } <$fh>;
    close($fh);
    return \@c;
}

sub last_call { my $c = calls(@_); return $c->[-1] }

sub clear_calls { my ($dir) = @_; unlink("$dir/calls.jsonl"); return }

sub storage_cfg_text {
    my (%o) = @_;
    my $id = $o{storeid} // 'dpool';
    my $text = "drbdpool: $id\n";
    for my $k (sort keys %o) {
        next if $k eq 'storeid';
        $text .= "\t$k $o{$k}\n";
    }
    return $text;
}

1;
