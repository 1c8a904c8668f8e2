package PVE::Storage::Custom::DRBDPool::Helper;

# Running the drbdpool helper for DRBDPoolPlugin.pm: one `drbdpool plugin
# <method>` process per call (no shell, a list exec; one JSON request on stdin,
# one JSON reply on stdout, see docs/PROTOCOL.md), bounded in time, its log
# lines passed on to the task log, the reply untainted; a failure dies with a
# message that says what went wrong and what to check. The plugin validates
# the arguments of each PVE method, calls call_helper and shapes the result.
#
# In a directory of its own: PVE loads every *.pm directly in
# PVE/Storage/Custom as a storage plugin (the stand-in loader in
# perl-shim/t/lib/PVE/Storage.pm does the same), and this module is not one.
#
# Runs inside PVE's daemons and CLIs under perl -T: no shell, bounded waits,
# untaint everything.

use strict;
use warnings;

use Exporter qw(import);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use IO::Select;
use JSON::PP ();
use POSIX qw(WNOHANG);
use Scalar::Util qw(tainted);
use Time::HiRes qw(time sleep);

use PVE::INotify;

our @EXPORT_OK = qw(call_helper helper_bin scfg_for_helper untaint_uint untaint_path json_bool);

my $PROTOCOL_VERSION = 1;

# Replies are decoded with an XS decoder when one is installed (PVE nodes have
# them): JSON::PP takes ~0.25 s for a `list` of 1,000 volumes (docs/BENCHMARKS.md).
my $JSON_DECODER = do {
    my $d;
    for my $mod (qw(Cpanel::JSON::XS JSON::XS)) {
        (my $file = "$mod.pm") =~ s{::}{/}g;
        if (eval { require $file; 1 }) {
            $d = $mod->new;
            last;
        }
    }
    $d // JSON::PP->new;
};
my $DEFAULT_BIN = '/usr/bin/drbdpool';

# Seconds each helper call may take before it is killed. Calls that run under
# PVE's storage lock (60 s lifetime) stay below it; status runs every 10 s in
# pvestatd and must never stall the node's status loop.
# Keys are the helper's method names (docs/PROTOCOL.md).
my %TIMEOUT = (
    status => 5,
    activate_storage => 10,
    path => 10,
    list => 20,
    size => 5,
    has_feature => 10,
    snapshot_list => 10,
    rollback_is_possible => 10,
    alloc => 55,
    free => 55,
    clone => 55,
    create_base => 55,
    rename => 55,
);
my $DEFAULT_TIMEOUT = 60; # everything else; `drbdpool-timeout` overrides it

# --- untainting ---------------------------------------------------------------

sub untaint_uint {
    my ($value, $what) = @_;
    die "drbdpool: $what must be a non-negative integer, got '" . ($value // 'undef') . "'\n"
        if !defined($value) || $value !~ m/^(\d{1,19})$/;
    return 0 + $1;
}

sub untaint_path {
    my ($path, $method) = @_;
    my ($clean) = (defined($path) && !ref($path)) ? $path =~ m{^(/[A-Za-z0-9_.+:=/-]+)$} : ();
    die "drbdpool: helper returned an invalid device path for $method\n"
        if !defined($clean) || $clean =~ m{/\.\.(/|$)};
    return $clean;
}

sub json_bool { return $_[0] ? JSON::PP::true : JSON::PP::false }

# Untaint a whole decoded reply. Strings keep only printable characters; the
# fields that reach paths or numbers are checked again by the callers.
# Scalars are handled in the loops, not by a call each: a `list` of 10,000
# volumes has ~150,000 of them (docs/BENCHMARKS.md).

sub _untaint_tree {
    my ($v) = @_;
    my $type = ref($v);
    if ($type eq 'HASH') {
        my %out;
        for my $k (keys %$v) {
            my ($key) = $k =~ m/^([\x20-\x7e]{1,256})$/ or next;
            my $x = $v->{$k};
            $out{$key} = ref($x) ? _untaint_tree($x)
                : defined($x) ? (($x =~ m/^([^\x00-\x08\x0b-\x1f\x7f]*)$/s)[0] // '')
                : undef;
        }
        return \%out;
    } elsif ($type eq 'ARRAY') {
        return [map { ref($_) ? _untaint_tree($_) : defined($_) ? (($_ =~ m/^([^\x00-\x08\x0b-\x1f\x7f]*)$/s)[0] // '') : undef } @$v];
    } elsif ($type) {
        return $v; # JSON booleans
    } elsif (defined($v)) {
        my ($clean) = $v =~ m/^([^\x00-\x08\x0b-\x1f\x7f]*)$/s;
        return $clean // '';
    }
    return undef; ## no critic (ProhibitExplicitReturnUndef): used in hash constructors and PVE expects undef
}

# A reply of printable ASCII, without escapes that could decode to control
# characters (\u, \b, \f, \r), decodes to what _untaint_tree would return
# (except keys over 256 characters, which the helper never writes): untaint the
# text once and skip the walk (~0.1 s for a `list` of 10,000 volumes; checking
# the key length here would cost half of that). Else undef: the reply is walked.
sub _plain_reply {
    my ($s) = @_;
    return undef if $s =~ m/[^\n\x20-\x7e]/ || $s =~ m/\\[ubfr]/; ## no critic (ProhibitExplicitReturnUndef)
    my ($clean) = $s =~ m/^(.*)\z/s;
    return $clean;
}

# storage.cfg as the helper wants it: PVE's parser turned content/nodes into
# hashes; send them back as the comma lists the admin wrote.
sub scfg_for_helper {
    my ($scfg) = @_;
    my %out;
    for my $k (sort keys %$scfg) {
        my $v = $scfg->{$k};
        next if !defined($v);
        if (ref($v) eq 'HASH') {
            $out{$k} = join(',', sort grep { $v->{$_} } keys %$v);
        } elsif (!ref($v)) {
            $out{$k} = $v;
        }
    }
    return \%out;
}

# --- running the helper ------------------------------------------------------

sub helper_bin {
    my $bin = $ENV{DRBDPOOL_BIN} // $DEFAULT_BIN;
    die "drbdpool: DRBDPOOL_BIN '$bin' is not an absolute path\n"
        if $bin !~ m{^(/[A-Za-z0-9_.+:=/-]+)$};
    return $1;
}

sub _timeout_for {
    my ($method, $scfg, $override) = @_;
    return $override if defined($override) && $override > 0;
    return $TIMEOUT{$method} if defined($TIMEOUT{$method});
    my $t = $scfg->{'drbdpool-timeout'};
    return ($t && $t =~ m/^(\d+)$/) ? $1 : $DEFAULT_TIMEOUT;
}

sub _kill_child {
    my ($pid) = @_;
    # The child leads its own process group: take down anything it started.
    kill('KILL', -$pid);
    kill('KILL', $pid);
    waitpid($pid, 0);
    return;
}

# Run `drbdpool plugin <method>` with $args; return the decoded, untainted
# `result`, or die with a message that says what went wrong and what to check.
sub call_helper {
    my ($method, $storeid, $scfg, $args, %opt) = @_;

    my $bin = helper_bin();
    my $node = PVE::INotify::nodename();
    my $what = "drbdpool helper '$bin plugin $method'";

    die "drbdpool: helper '$bin' not found or not executable on node '$node'"
        . " (install drbdpool on every node, or set DRBDPOOL_BIN)\n"
        if !-f $bin || !-x _;

    my $request = JSON::PP->new->canonical->encode({
        version => $PROTOCOL_VERSION,
        storeid => $storeid,
        node => $node,
        scfg => scfg_for_helper($scfg // {}),
        args => $args // {},
    });

    my $timeout = _timeout_for($method, $scfg // {}, $opt{timeout});

    pipe(my $in_r, my $in_w) or die "drbdpool: pipe failed: $!\n";
    pipe(my $out_r, my $out_w) or die "drbdpool: pipe failed: $!\n";
    pipe(my $err_r, my $err_w) or die "drbdpool: pipe failed: $!\n";
    # A 1 MiB reply pipe (Linux F_SETPIPE_SZ; the default maximum): a big `list` reply is
    # written in one go instead of 16 rounds of 64 KiB, each a switch between the processes.
    fcntl($out_w, 1031, 1 << 20) if $^O eq 'linux';

    my $pid = fork();
    die "drbdpool: fork failed: $!\n" if !defined($pid);

    if ($pid == 0) {
        # child: no shell, a list exec; environment passes through.
        eval {
            close($in_w);
            close($out_r);
            close($err_r);
            open(STDIN, '<&', $in_r) or die "dup stdin: $!\n";
            open(STDOUT, '>&', $out_w) or die "dup stdout: $!\n";
            open(STDERR, '>&', $err_w) or die "dup stderr: $!\n";
            setpgrp(0, 0);
            # perl -T refuses to exec with a tainted PATH and friends.
            if (tainted($ENV{PATH} // '')) {
                $ENV{PATH} = '/usr/sbin:/usr/bin:/sbin:/bin';
            }
            delete @ENV{qw(IFS CDPATH ENV BASH_ENV)};
            exec { $bin } $bin, 'plugin', $method;
            die "exec failed: $!\n";
        };
        print STDERR "cannot run $bin: $@";
        POSIX::_exit(127);
    }

    close($in_r);
    close($out_w);
    close($err_w);

    for my $fh ($in_w, $out_r, $err_r) {
        my $flags = fcntl($fh, F_GETFL, 0);
        fcntl($fh, F_SETFL, $flags | O_NONBLOCK);
    }

    my ($stdout, $stderr) = ('', '');
    # Helper logs go where PVE shows them (task log / journal), not into results, and
    # as they come (a long wait's progress is seen while it lasts); only what an admin
    # needs there (_task_log). $err_line holds a line not complete yet.
    my $err_line = '';
    my $log_lines = sub {
        my ($all) = @_;
        return if $opt{quiet};
        my $upto = $all ? length($err_line) : rindex($err_line, "\n") + 1;
        return if $upto <= 0;
        my $log = _task_log(substr($err_line, 0, $upto, ''));
        print STDERR $log if $log ne '';
    };
    my $to_write = $request;
    my $deadline = time() + $timeout;
    my $rsel = IO::Select->new($out_r, $err_r);
    my $wsel = IO::Select->new($in_w);
    my $timed_out = 0;

    local $SIG{PIPE} = 'IGNORE'; # a helper that exits early must not kill us

    while ($rsel->count() || $wsel->count()) {
        my $left = $deadline - time();
        if ($left <= 0) {
            $timed_out = 1;
            last;
        }
        my ($readable, $writable) = IO::Select->select($rsel, $wsel, undef, $left);
        for my $fh (@{ $writable // [] }) {
            my $n = syswrite($fh, $to_write);
            if (!defined($n)) {
                next if $!{EAGAIN};
                $to_write = ''; # EPIPE: the helper stopped reading; its reply says why
            } else {
                substr($to_write, 0, $n, '');
            }
            if ($to_write eq '') {
                $wsel->remove($fh);
                close($fh);
            }
        }
        for my $fh (@{ $readable // [] }) {
            my $n = sysread($fh, my $buf, 1 << 20);
            next if !defined($n) && $!{EAGAIN};
            if (!$n) {
                $rsel->remove($fh);
                close($fh);
                next;
            }
            if ($fh == $out_r) {
                $stdout .= $buf;
                if (length($stdout) > 16 * 1024 * 1024) {
                    _kill_child($pid);
                    die "$what: reply larger than 16 MiB, giving up\n";
                }
            } else {
                $stderr .= $buf if length($stderr) < 1024 * 1024;
                $err_line .= $buf if length($err_line) < 1024 * 1024;
                $log_lines->(0);
            }
        }
    }

    $log_lines->(1); # a last line without its newline

    if ($timed_out) {
        _kill_child($pid);
        die "$what timed out after ${timeout}s and was killed on node '$node';"
            . " check 'drbdpool status' and the drbdpool agent there"
            . _stderr_tail($stderr) . "\n";
    }

    # The pipes are closed; the helper should be gone within moments.
    my $exit;
    my $nap = 0.0001;
    while (1) {
        my $w = waitpid($pid, WNOHANG);
        if ($w == $pid) {
            $exit = ($? & 127) ? 128 + ($? & 127) : $? >> 8;
            last;
        }
        # -1: a daemon's own SIGCHLD handler reaped it; the reply alone decides
        last if $w < 0;
        if (time() >= $deadline + 2) {
            _kill_child($pid);
            $exit = -1;
            last;
        }
        # Its pipes are closed, so it is exiting: poll from 0.1 ms up to 10 ms
        # (a flat 10 ms sleep cost most calls 10 ms; docs/BENCHMARKS.md).
        sleep($nap);
        $nap *= 2 if $nap < 0.01;
    }
    my $exit_text = $exit // 'unknown (reaped elsewhere)';

    my $plain = _plain_reply($stdout);
    my $reply = eval { $JSON_DECODER->decode($plain // $stdout) };
    if (!$reply || ref($reply) ne 'HASH' || !exists($reply->{ok})) {
        if ($stdout =~ m/^\s*$/) {
            die "$what exited with code $exit_text without a reply on node '$node';"
                . " check that the installed drbdpool matches this plugin (protocol $PROTOCOL_VERSION)"
                . _stderr_tail($stderr) . "\n";
        }
        my $head = substr($stdout, 0, 200);
        $head =~ s/[^\x20-\x7e]/?/g;
        die "$what returned garbage instead of a JSON reply (exit code $exit_text): '$head';"
            . " check that the installed drbdpool matches this plugin (protocol $PROTOCOL_VERSION)"
            . _stderr_tail($stderr) . "\n";
    }
    $reply = _untaint_tree($reply) if !defined($plain);

    if (!$reply->{ok}) {
        my $err = ref($reply->{error}) eq 'HASH' ? $reply->{error} : {};
        my $kind = $err->{kind} // 'unknown';
        my $msg = $err->{message} // 'no message';
        chomp($msg);
        die "drbdpool: $method failed ($kind): $msg\n";
    }
    if (defined($exit) && $exit != 0) {
        die "$what reported success but exited with code $exit; not trusting the reply"
            . _stderr_tail($stderr) . "\n";
    }

    return $reply->{result};
}

# What of the helper's stderr goes into the task log of every pvesm/qm/GUI task:
# its WARN and ERROR lines, without the timestamp, and every line that is not a
# log line (progress the helper prints plainly). Routine INFO, DEBUG and TRACE
# lines are dropped; DRBDPOOL_TASK_LOG=all keeps everything (debugging).
# The helper's log lines look like "2026-11-26T13:11:02.123456Z  WARN message"
# (tracing's default format, src/main.rs).
my $LOG_LINE_RE = qr/^\d{4}-\d\d-\d\dT[\d:.]+Z?\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(.*)$/s;

sub _task_log {
    my ($stderr) = @_;
    return $stderr if ($ENV{DRBDPOOL_TASK_LOG} // '') eq 'all';
    my $out = '';
    for my $line (split(/^/m, $stderr)) {
        if ($line =~ $LOG_LINE_RE) {
            my ($level, $msg) = ($1, $2);
            next if $level ne 'WARN' && $level ne 'ERROR';
            $line = ($level eq 'WARN' ? 'drbdpool warning: ' : 'drbdpool error: ') . $msg;
        }
        $out .= $line;
    }
    $out .= "\n" if $out ne '' && $out !~ m/\n\z/;
    return $out;
}

sub _stderr_tail {
    my ($stderr) = @_;
    return '' if $stderr eq '';
    my @lines = grep { m/\S/ } split(/\n/, $stderr);
    my $tail = join(' | ', @lines[-(@lines < 3 ? scalar(@lines) : 3) .. -1]);
    $tail =~ s/[^\x20-\x7e]/?/g;
    return "; helper said: $tail";
}

1;
