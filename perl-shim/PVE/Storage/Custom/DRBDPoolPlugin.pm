package PVE::Storage::Custom::DRBDPoolPlugin;

# Proxmox VE storage plugin for drbdpool: DRBD-replicated block storage.
#
# This module is deliberately thin. It validates arguments, runs the helper
# `drbdpool plugin <method>` (one JSON request on stdin, one JSON reply on
# stdout, see docs/PROTOCOL.md), untaints what comes back and dies with the
# helper's message. All state and all decisions live in the helper.
#
# It runs inside pvedaemon/pveproxy (perl -T), pvestatd, pvescheduler,
# pve-ha-lrm/crm and the CLIs, so: no shell, bounded waits, untaint everything.

use strict;
use warnings;

use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use IO::Select;
use JSON::PP ();
use POSIX qw(WNOHANG);
use Scalar::Util qw(tainted);
use Time::HiRes qw(time sleep);

use PVE::INotify;
use PVE::Storage::Plugin;
# Not `use PVE::Storage`: PVE::Storage loads us from its own loader, and
# loading it from here first would run that loader before we are derived.

use base qw(PVE::Storage::Plugin);

# Newest PVE storage API this plugin was tested against (ApiChangeLog v15:
# volume_resize gets $snapname, volume_snapshot_info may report virtual-size).
my $TESTED_APIVER = 15;

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

# PVE reads this list when it parses storage.cfg and then sets shared=1 for
# our type: migration moves only the config, locks become cluster-wide.
push @PVE::Storage::Plugin::SHARED_STORAGE, 'drbdpool'
    if !grep { $_ eq 'drbdpool' } @PVE::Storage::Plugin::SHARED_STORAGE;

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

# --- PVE plugin registration ---------------------------------------------

sub api {
    # Read APIVER at run time (not as an inlined constant) so the answer
    # follows the PVE that actually loads us.
    my $code = PVE::Storage->can('APIVER');
    my $apiver = $code ? $code->() : $TESTED_APIVER;
    return $apiver <= $TESTED_APIVER ? $apiver : $TESTED_APIVER;
}

sub type {
    return 'drbdpool';
}

sub plugindata {
    return {
        content => [{ images => 1, rootdir => 1 }, { images => 1 }],
        format => [{ raw => 1 }, 'raw'],
        # No secrets in storage.cfg: the per-resource DRBD secrets live in the
        # helper's store under /etc/pve/priv. Declaring an empty set keeps PVE
        # from applying its legacy list (password, keyring, ...).
        'sensitive-properties' => {},
    };
}

# Only properties of our own, all prefixed: SectionConfig dies on a duplicate
# name and that takes all of PVE::Storage down with it.
sub properties {
    return {
        'drbdpool-backend' => {
            description => 'Backing storage of each replica on the nodes (default lvmthin).',
            type => 'string',
            enum => ['lvmthin', 'lvm', 'file'],
        },
        'drbdpool-dir' => {
            description => "Directory holding the backing files (backend 'file' only, for labs and tests).",
            type => 'string',
            format => 'pve-storage-path',
        },
        'drbdpool-replicas' => {
            description => 'Number of replicas of each new volume (default 2).',
            type => 'integer',
            minimum => 1,
            maximum => 3,
        },
        'drbdpool-timeout' => {
            description => 'Seconds a slow helper call (activate, resize, snapshot) may take (default 60).',
            type => 'integer',
            minimum => 5,
            maximum => 3600,
        },
        'drbdpool-resync-rate-max' => {
            description => 'Most a resync (a replica rejoining or new) may use, per second, e.g. 100M'
                . ' (DRBD c-max-rate; units K, M, G; 250K..4G; default 4G: the link is the limit).',
            type => 'string',
            maxLength => 16,
        },
        'drbdpool-resync-rate-min' => {
            description => 'While guests write, a resync faster than this yields to them, e.g. 20M'
                . ' (DRBD c-min-rate; units K, M, G, or 0; default 0: the resync never slows down for guests).',
            type => 'string',
            maxLength => 16,
        },
    };
}

sub options {
    return {
        vgname => { optional => 1, fixed => 1 },
        thinpool => { optional => 1, fixed => 1 },
        'drbdpool-backend' => { optional => 1, fixed => 1 },
        'drbdpool-dir' => { optional => 1, fixed => 1 },
        'drbdpool-replicas' => { optional => 1 },
        'drbdpool-timeout' => { optional => 1 },
        'drbdpool-resync-rate-max' => { optional => 1 },
        'drbdpool-resync-rate-min' => { optional => 1 },
        nodes => { optional => 1 },
        disable => { optional => 1 },
        content => { optional => 1 },
        bwlimit => { optional => 1 },
    };
}

# Check that the backend has what it needs; PVE's schema cannot express
# "vgname is required when the backend is lvmthin".
sub _check_scfg {
    my ($scfg) = @_;

    my $backend = $scfg->{'drbdpool-backend'} // 'lvmthin';
    if ($backend eq 'lvmthin') {
        die "drbdpool: backend 'lvmthin' needs 'vgname' and 'thinpool'\n"
            if !$scfg->{vgname} || !$scfg->{thinpool};
    } elsif ($backend eq 'lvm') {
        die "drbdpool: backend 'lvm' needs 'vgname'\n" if !$scfg->{vgname};
    } elsif ($backend eq 'file') {
        die "drbdpool: backend 'file' needs 'drbdpool-dir'\n" if !$scfg->{'drbdpool-dir'};
    } else {
        die "drbdpool: unknown backend '$backend' (use lvmthin, lvm or file)\n";
    }
    _check_resync($scfg);
    return;
}

# A rate as DRBD writes it (the helper checks the same, src/protocol/scfg.rs): digits and
# K, M or G per second, or 0. Returns KiB/s.
my $RATE_LIMIT_KIB = 4 * 1024 * 1024; # DRBD's limit, 4G
sub _rate_kib {
    my ($key, $v) = @_;
    return 0 if $v eq '0';
    my ($n, $u) = $v =~ m/^(\d{1,10})([KkMmGg])$/
        or die "drbdpool: $key '$v' is not a rate: write digits and a unit K, M or G per second"
        . " (e.g. 500K, 100M, 1G), or 0\n";
    my $kib = $n * { k => 1, m => 1024, g => 1024 * 1024 }->{ lc($u) };
    die "drbdpool: $key '$v' is above DRBD's limit of 4G per second\n" if $kib > $RATE_LIMIT_KIB;
    return $kib;
}

sub _check_resync {
    my ($scfg) = @_;
    my ($max, $min) = map { $scfg->{"drbdpool-resync-rate-$_"} } qw(max min);
    my $max_kib = defined($max) ? _rate_kib('drbdpool-resync-rate-max', $max) : $RATE_LIMIT_KIB;
    die "drbdpool: drbdpool-resync-rate-max must be at least 250K (DRBD's lowest c-max-rate)\n"
        if $max_kib < 250;
    my $min_kib = defined($min) ? _rate_kib('drbdpool-resync-rate-min', $min) : 0;
    die "drbdpool: drbdpool-resync-rate-min ($min) is above drbdpool-resync-rate-max ("
        . ($max // '4G') . "): lower the min or raise the max\n"
        if $min_kib > $max_kib;
    return;
}

sub on_add_hook {
    my ($class, $storeid, $scfg, %sensitive) = @_;
    _check_scfg($scfg);
    return;
}

sub on_update_hook {
    my ($class, $storeid, $scfg, %sensitive) = @_;
    return; # only changeable options arrive here; fixed ones cannot change
}

sub on_update_hook_full {
    my ($class, $storeid, $scfg, $update, $delete, $sensitive) = @_;
    my $merged = { %$scfg, %{ $update // {} } };
    delete $merged->{$_} for @{ $delete // [] };
    _check_scfg($merged);
    return;
}

# --- validation and untainting --------------------------------------------

my $OWN_VOLNAME_RE = qr/(?:vm|base)-\d+-[A-Za-z0-9][A-Za-z0-9_.+=-]{0,99}/;
# A linked clone is `<base>/<own name>` (base-100-disk-0/vm-101-disk-0), as in PVE's
# ZFS and RBD plugins: PVE's volume_is_base_and_used finds a base's clones by the
# base name parse_volname returns, and refuses to free the base while they exist.
my $VOLNAME_RE = qr/(?:base-\d+-[A-Za-z0-9][A-Za-z0-9_.+=-]{0,99}\/)?$OWN_VOLNAME_RE/;
my $SNAPNAME_RE = qr/[A-Za-z][A-Za-z0-9_-]{0,63}/;

sub _volname {
    my ($volname) = @_;
    die "drbdpool: missing volume name\n" if !defined($volname) || $volname eq '';
    my ($clean) = $volname =~ m/^($VOLNAME_RE)$/;
    die "drbdpool: invalid volume name '$volname' (expected vm-<vmid>-<name> or base-<vmid>-<name>,"
        . " or <base>/<name> for a linked clone)\n"
        if !defined($clean) || $clean =~ m/\.\./;
    return $clean;
}

sub _snapname {
    my ($snap) = @_;
    return undef if !defined($snap); ## no critic (ProhibitExplicitReturnUndef): used in hash constructors and PVE expects undef
    die "drbdpool: invalid snapshot name '$snap'\n" if $snap !~ m/^($SNAPNAME_RE)$/;
    return $1;
}

sub _uint {
    my ($value, $what) = @_;
    die "drbdpool: $what must be a non-negative integer, got '" . ($value // 'undef') . "'\n"
        if !defined($value) || $value !~ m/^(\d{1,19})$/;
    return 0 + $1;
}

sub _vmid {
    my ($vmid) = @_;
    die "drbdpool: invalid VMID '" . ($vmid // 'undef') . "'\n"
        if !defined($vmid) || $vmid !~ m/^([1-9]\d{0,8})$/;
    return 0 + $1;
}

sub _path {
    my ($path, $method) = @_;
    my ($clean) = (defined($path) && !ref($path)) ? $path =~ m{^(/[A-Za-z0-9_.+:=/-]+)$} : ();
    die "drbdpool: helper returned an invalid device path for $method\n"
        if !defined($clean) || $clean =~ m{/\.\.(/|$)};
    return $clean;
}

sub _bool { return $_[0] ? JSON::PP::true : JSON::PP::false }

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
        return [map { ref($_) ? _untaint_tree($_) : defined($_) ? _untaint_scalar($_) : undef } @$v];
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
sub _scfg_for_helper {
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

sub _helper_bin {
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
sub _call {
    my ($class, $method, $storeid, $scfg, $args, %opt) = @_;

    my $bin = _helper_bin();
    my $node = PVE::INotify::nodename();
    my $what = "drbdpool helper '$bin plugin $method'";

    die "drbdpool: helper '$bin' not found or not executable on node '$node'"
        . " (install drbdpool on every node, or set DRBDPOOL_BIN)\n"
        if !-f $bin || !-x _;

    my $request = JSON::PP->new->canonical->encode({
        version => $PROTOCOL_VERSION,
        storeid => $storeid,
        node => $node,
        scfg => _scfg_for_helper($scfg // {}),
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

# --- volume names -----------------------------------------------------------

sub parse_volname {
    my ($class, $volname) = @_;

    # ($vtype, $name, $vmid, $basename, $basevmid, $isBase, $format), as the ZFS plugin:
    # a linked clone `base-100-disk-0/vm-101-disk-0` has base name base-100-disk-0 and
    # base vmid 100; $name is the clone's own name.
    if (defined($volname) && $volname =~ m/^((base-(\d+)-[^\s\/]+)\/)?((vm|base)-(\d+)-\S+)$/) {
        my ($basename, $basevmid, $name, $prefix, $vmid) = ($2, $3, $4, $5, $6);
        _volname($volname); # our names are stricter than \S+ (one '/' at most, no '..')
        return ('images', $name, $vmid, $basename, $basevmid, $prefix eq 'base', 'raw');
    }
    die "unable to parse drbdpool volume name '" . ($volname // '') . "'\n";
}

sub get_formats {
    my ($class, $scfg, $storeid) = @_;
    return { default => 'raw', valid => { raw => 1 } };
}

# --- paths (no activation: `pvesm path` calls this on any node) ---------------

sub filesystem_path {
    my ($class, $scfg, $volname, $snapname, $storeid) = @_;

    my ($vtype, $name, $vmid) = $class->parse_volname($volname);
    $storeid //= _storeid_of($scfg);
    my $res = $class->_call('path', $storeid, $scfg, {
        volname => _volname($name),
        snapname => _snapname($snapname),
    });
    my $path = _path($res->{path}, 'path');
    return wantarray ? ($path, $vmid, $vtype) : $path;
}

# PVE's filesystem_path() has no storeid argument. Find the section this
# $scfg came from; if that fails the helper looks the volume up by name.
sub _storeid_of {
    my ($scfg) = @_;
    my $cfg = eval { PVE::Storage::config() } or return undef; ## no critic (ProhibitExplicitReturnUndef): used in hash constructors and PVE expects undef
    my $ids = $cfg->{ids} // {};
    for my $id (sort keys %$ids) {
        return $id if $ids->{$id} == $scfg;
    }
    my @same = grep {
        ($ids->{$_}->{type} // '') eq 'drbdpool'
            && JSON::PP->new->canonical->encode(_scfg_for_helper($ids->{$_}))
            eq JSON::PP->new->canonical->encode(_scfg_for_helper($scfg))
    } sort keys %$ids;
    return @same == 1 ? $same[0] : undef;
}

sub path {
    my ($class, $scfg, $volname, $storeid, $snapname) = @_;
    return $class->filesystem_path($scfg, $volname, $snapname, $storeid);
}

sub qemu_blockdev_options {
    my ($class, $scfg, $storeid, $volname, $machine_version, $options) = @_;

    my $snap = $options && $options->{'snapshot-name'};
    my ($path) = $class->path($scfg, $volname, $storeid, $snap);
    return { driver => 'host_device', filename => $path };
}

# --- allocation ---------------------------------------------------------------

sub alloc_image {
    my ($class, $storeid, $scfg, $vmid, $fmt, $name, $size) = @_;

    $vmid = _vmid($vmid);
    die "drbdpool: unsupported format '$fmt' (only raw)\n" if defined($fmt) && $fmt ne 'raw';
    if (defined($name) && $name ne '') {
        $name = _volname($name);
        die "drbdpool: illegal name '$name' - should be 'vm-$vmid-*'\n" if $name !~ m/^vm-$vmid-/;
    } else {
        $name = undef;
    }
    my $size_kib = _uint($size, 'size (KiB)');
    die "drbdpool: size must be at least 1 KiB\n" if $size_kib < 1;

    my $res = $class->_call('alloc', $storeid, $scfg, {
        vmid => $vmid,
        fmt => 'raw',
        name => $name,
        size_kib => $size_kib,
    });
    my $volname = _volname($res->{volname});
    die "drbdpool: helper allocated '$volname' but '$name' was asked for\n"
        if defined($name) && $volname ne $name;
    return $volname;
}

sub free_image {
    my ($class, $storeid, $scfg, $volname, $isBase, $format) = @_;

    $volname = _volname($volname);
    $class->_call('free', $storeid, $scfg, {
        volname => $volname,
        is_base => _bool($isBase),
    });
    return undef; ## no critic (ProhibitExplicitReturnUndef): used in hash constructors and PVE expects undef
}

sub list_images {
    my ($class, $storeid, $scfg, $vmid, $vollist, $cache) = @_;

    my $args = {};
    $args->{vmid} = _vmid($vmid) if defined($vmid);
    if ($vollist) {
        my @volids;
        for my $volid (@$vollist) {
            my ($sid, $vn) = $volid =~ m/^([^:]+):(.+)$/ or next;
            push @volids, "$storeid:" . _volname($vn) if $sid eq $storeid;
        }
        $args->{vollist} = \@volids;
    }

    my $res = $class->_call('list', $storeid, $scfg, $args);
    my $images = ref($res) eq 'HASH' ? ($res->{volumes} // $res->{images}) : $res;
    die "drbdpool: helper 'list' returned no volume list\n" if ref($images) ne 'ARRAY';

    # The helper sends PVE's own entries (volid, format, size, vmid, ctime, parent?), typed
    # in Rust (sizes and vmids are integers there), and has filtered already. At 10,000
    # volumes a parse_volname and a fresh hash per entry cost 30 ms, so entries pass
    # through after one cheap check: they belong to this storage.
    my $prefix = "$storeid:";
    my $plen = length($prefix);
    for my $img (@$images) {
        my $volid = ref($img) eq 'HASH' ? $img->{volid} // '' : '';
        die "drbdpool: helper 'list' returned '$volid', not a volume of storage '$storeid'\n"
            if substr($volid, 0, $plen) ne $prefix;
    }
    return $images if !$vollist && !defined($vmid);
    my %want = map { $_ => 1 } @{ $vollist // [] };
    return [ grep { $vollist ? $want{ $_->{volid} } : $_->{vmid} == $vmid } @$images ];
}

# The helper reports sizes in bytes (`size`) or KiB (`size_kib`).
sub _size_bytes {
    my ($h) = @_;
    return _uint($h->{size}, 'size') if defined($h->{size});
    return _uint($h->{size_kib}, 'size_kib') * 1024 if defined($h->{size_kib});
    die "drbdpool: helper reply has no size\n";
}

# --- storage ---------------------------------------------------------------

sub status {
    my ($class, $storeid, $scfg, $cache) = @_;

    my $res = $class->_call('status', $storeid, $scfg, {}, quiet => 1);
    return undef if ref($res) ne 'HASH'; ## no critic (ProhibitExplicitReturnUndef): used in hash constructors and PVE expects undef
    return (
        _uint($res->{total}, 'total'),
        _uint($res->{avail}, 'avail'),
        _uint($res->{used}, 'used'),
        ($res->{active} // 1) ? 1 : 0,
    );
}

# PVE runs this before every activate_storage. The helper has no separate
# method: the store is local (pmxcfs), so "connected" means the helper is
# installed; activate_storage then checks that this node is registered.
sub check_connection {
    my ($class, $storeid, $scfg) = @_;
    my $bin = _helper_bin();
    die "drbdpool: helper '$bin' not found or not executable on node '"
        . PVE::INotify::nodename() . "' (install drbdpool on every node, or set DRBDPOOL_BIN)\n"
        if !-f $bin || !-x _;
    return 1;
}

sub activate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    return if $cache && $cache->{drbdpool_activated}->{$storeid};
    $class->_call('activate_storage', $storeid, $scfg, {}, quiet => 1);
    $cache->{drbdpool_activated}->{$storeid} = 1 if $cache;
    return;
}

sub deactivate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    return; # nothing storage-wide to tear down; volumes are deactivated one by one
}

# --- volumes -----------------------------------------------------------------

sub activate_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $cache, $hints) = @_;

    my $args = {
        volname => _volname($volname),
        snapname => _snapname($snapname),
        # qemu-server sets this before activate_volumes on the target of a
        # live migration: the one moment two primaries are allowed.
        migrated_from => _migrated_from(),
        hints => _hints($hints),
    };
    $class->_call('activate', $storeid, $scfg, $args);
    return;
}

sub _migrated_from {
    my $from = $ENV{PVE_MIGRATED_FROM};
    return undef if !defined($from) || $from eq ''; ## no critic (ProhibitExplicitReturnUndef): used in hash constructors and PVE expects undef
    die "drbdpool: invalid PVE_MIGRATED_FROM '$from'\n"
        if $from !~ m/^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)$/;
    return $1;
}

sub _hints {
    my ($hints) = @_;
    return undef if ref($hints) ne 'HASH'; ## no critic (ProhibitExplicitReturnUndef): used in hash constructors and PVE expects undef
    return { map { $_ => _bool($hints->{$_}) } grep { m/^[a-z0-9-]+$/ } keys %$hints };
}

sub deactivate_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $cache) = @_;

    $class->_call('deactivate', $storeid, $scfg, {
        volname => _volname($volname),
        snapname => _snapname($snapname),
    });
    return;
}

# Containers and TPM state: PVE activates the volume first (activate_volumes),
# so mapping is only the device path; DRBD needs no extra mapping step.
sub map_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $hints) = @_;
    my ($path) = $class->path($scfg, $volname, $storeid, $snapname);
    return $path;
}

sub unmap_volume {
    my ($class, $storeid, $scfg, $volname, $snapname) = @_;
    _volname($volname);
    return 1; # the device goes away with deactivate_volume
}

sub volume_size_info {
    my ($class, $scfg, $storeid, $volname, $timeout) = @_;

    my $t = (defined($timeout) && $timeout =~ m/^(\d+(?:\.\d+)?)$/ && $1 > 0) ? $1 : undef;
    my $res = $class->_call('size', $storeid, $scfg, {
        volname => _volname($volname),
    }, timeout => $t);
    my $size = _size_bytes($res);
    return $size if !wantarray;
    my $used = defined($res->{used}) ? _uint($res->{used}, 'used') : $size;
    my $parent = defined($res->{parent}) ? _volname($res->{parent}) : undef;
    my $ctime = defined($res->{ctime}) ? _uint($res->{ctime}, 'ctime') : undef;
    return ($size, 'raw', $used, $parent, $ctime);
}

sub volume_resize {
    my ($class, $scfg, $storeid, $volname, $size, $running, $snapname) = @_;

    die "drbdpool: resizing a snapshot is not supported\n" if defined($snapname);
    my $bytes = _uint($size, 'size (bytes)');
    die "drbdpool: new size $bytes is not a multiple of 1024 bytes\n" if $bytes % 1024;

    $class->_call('resize', $storeid, $scfg, {
        volname => _volname($volname),
        size_bytes => $bytes,
        running => _bool($running),
    });
    return;
}

# --- snapshots ---------------------------------------------------------------

sub _snap_call {
    my ($class, $method, $scfg, $storeid, $volname, $snap, %extra) = @_;
    die "drbdpool: missing snapshot name\n" if !defined($snap);
    return $class->_call($method, $storeid, $scfg, {
        volname => _volname($volname),
        snap => _snapname($snap),
        %extra,
    });
}

sub volume_snapshot {
    my ($class, $scfg, $storeid, $volname, $snap) = @_;
    $class->_snap_call('snapshot', $scfg, $storeid, $volname, $snap);
    return;
}

sub volume_snapshot_rollback {
    my ($class, $scfg, $storeid, $volname, $snap) = @_;
    $class->_snap_call('snapshot_rollback', $scfg, $storeid, $volname, $snap);
    return;
}

sub volume_snapshot_delete {
    my ($class, $scfg, $storeid, $volname, $snap, $running) = @_;
    $class->_snap_call('snapshot_delete', $scfg, $storeid, $volname, $snap,
        running => _bool($running));
    return;
}

sub volume_rollback_is_possible {
    my ($class, $scfg, $storeid, $volname, $snap, $blockers) = @_;

    my $res = $class->_snap_call('rollback_is_possible', $scfg, $storeid, $volname, $snap);
    $res = {} if ref($res) ne 'HASH';
    my @found = grep { defined && m/^$SNAPNAME_RE$/ } @{ $res->{blockers} // [] };
    push @$blockers, @found if $blockers && ref($blockers) eq 'ARRAY';
    return 1 if $res->{possible} // 1;
    die "drbdpool: can't rollback '$volname' to '$snap'"
        . (@found ? ", newer snapshots exist: " . join(', ', @found) : '') . "\n";
}

sub volume_snapshot_info {
    my ($class, $scfg, $storeid, $volname) = @_;

    my $res = $class->_call('snapshot_list', $storeid, $scfg, {
        volname => _volname($volname),
    });
    my $snaps = ref($res) eq 'HASH' ? ($res->{snapshots} // {}) : {};
    my $out = {};
    for my $name (keys %$snaps) {
        my $s = _snapname($name);
        my $info = ref($snaps->{$name}) eq 'HASH' ? $snaps->{$name} : {};
        $out->{$s} = {
            name => $s,
            timestamp => _uint($info->{timestamp} // 0, 'timestamp'),
        };
        $out->{$s}->{id} = $info->{id} if defined($info->{id}) && $info->{id} =~ m/^([\w.:-]+)$/;
    }
    return $out;
}

sub rename_snapshot {
    my ($class, $scfg, $storeid, $volname, $source_snap, $target_snap) = @_;
    die "drbdpool: renaming snapshots is not supported\n";
}

sub volume_snapshot_needs_fsfreeze {
    return 0;
}

sub volume_qemu_snapshot_method {
    my ($class, $storeid, $scfg, $volname) = @_; # note: storeid before scfg here
    return 'storage';
}

sub volume_has_feature {
    my ($class, $scfg, $feature, $storeid, $volname, $snapname, $running, $opts) = @_;

    # The features PVE asks about (Storage.pm volume_has_feature); a newer PVE
    # asking for one we do not know gets "no" rather than an error.
    my %known = map { $_ => 1 } qw(snapshot clone template copy sparseinit rename replicate);
    return undef if !defined($feature) || !$known{$feature}; ## no critic (ProhibitExplicitReturnUndef)
    my ($f) = $feature =~ m/^([a-z]+)$/;
    # Only the helper knows what the backend can do (thin snapshots, ...).
    my $res = $class->_call('has_feature', $storeid, $scfg, {
        feature => $f,
        volname => _volname($volname),
        snapname => _snapname($snapname),
        running => _bool($running),
    });
    my $has = ref($res) eq 'HASH' ? ($res->{supported} // $res->{has}) : $res;
    return $has ? 1 : undef;
}

sub storage_can_replicate {
    my ($class, $scfg, $storeid, $format) = @_;
    return 0; # DRBD replicates every write; PVE's zfs-style replication does not apply
}

# --- templates, clones, renames ------------------------------------------------

sub create_base {
    my ($class, $storeid, $scfg, $volname) = @_;

    my (undef, undef, undef, undef, undef, $isBase) = $class->parse_volname($volname);
    die "drbdpool: create_base not possible with base image\n" if $isBase;
    my $res = $class->_call('create_base', $storeid, $scfg, { volname => _volname($volname) });
    my $new = _volname($res->{volname});
    die "drbdpool: helper returned '$new' for a base volume\n" if $new !~ m/^(?:base-[^\/]+\/)?base-/;
    return $new;
}

sub clone_image {
    my ($class, $scfg, $storeid, $volname, $vmid, $snap) = @_;

    my $res = $class->_call('clone', $storeid, $scfg, {
        volname => _volname($volname),
        vmid => _vmid($vmid),
        snap => _snapname($snap),
    });
    my $new = _volname($res->{volname});
    my (undef, undef, $owner) = $class->parse_volname($new);
    die "drbdpool: helper returned clone '$new' that is not owned by VM $vmid\n"
        if $owner != $vmid || $new !~ m/^base-[^\/]+\/vm-/;
    return $new;
}

sub rename_volume {
    my ($class, $scfg, $storeid, $source_volname, $target_vmid, $target_volname) = @_;

    my $res = $class->_call('rename', $storeid, $scfg, {
        volname => _volname($source_volname),
        target_vmid => _vmid($target_vmid),
        target_volname => defined($target_volname) ? _volname($target_volname) : undef,
    });
    my $new = _volname($res->{volname});
    return "$storeid:$new";
}

# --- export / import (raw+size) -----------------------------------------------

sub volume_export_formats {
    my ($class, $scfg, $storeid, $volname, $snapshot, $base_snapshot, $with_snapshots) = @_;
    return () if defined($snapshot) || defined($base_snapshot) || $with_snapshots;
    return ('raw+size');
}

sub volume_import_formats {
    my ($class, $scfg, $storeid, $volname, $snapshot, $base_snapshot, $with_snapshots) = @_;
    return () if defined($base_snapshot) || $with_snapshots;
    return ('raw+size');
}

# Copy exactly $bytes from $in to $out (0 = until EOF is not allowed: the
# header told us the size, and a short stream is an error).
sub _copy_exact {
    my ($in, $out, $bytes, $what) = @_;
    my $left = $bytes;
    while ($left > 0) {
        my $want = $left < 1048576 ? $left : 1048576;
        my $n = sysread($in, my $buf, $want);
        die "drbdpool: $what: read failed: $!\n" if !defined($n);
        die "drbdpool: $what: stream ended " . ($bytes - $left) . " of $bytes bytes in\n" if $n == 0;
        my $off = 0;
        while ($off < $n) {
            my $w = syswrite($out, $buf, $n - $off, $off);
            die "drbdpool: $what: write failed: $!\n" if !defined($w);
            $off += $w;
        }
        $left -= $n;
    }
    return;
}

sub volume_export {
    my ($class, $scfg, $storeid, $fh, $volname, $format, $snapshot, $base_snapshot, $with_snapshots)
        = @_;

    die "drbdpool: volume export format '$format' not available\n" if $format ne 'raw+size';
    die "drbdpool: cannot export volumes together with their snapshots\n" if $with_snapshots;
    die "drbdpool: cannot export a snapshot\n" if defined($snapshot);
    die "drbdpool: cannot export an incremental stream\n" if defined($base_snapshot);

    $volname = _volname($volname);
    $class->activate_volume($storeid, $scfg, $volname, undef, {});
    my $err;
    eval {
        my $size = $class->volume_size_info($scfg, $storeid, $volname, 30);
        my $path = $class->path($scfg, $volname, $storeid);
        open(my $dev, '<', $path) or die "drbdpool: cannot open '$path' for export: $!\n";
        binmode($dev);
        PVE::Storage::Plugin::write_common_header($fh, $size);
        _copy_exact($dev, $fh, $size, "export of $volname");
        close($dev);
    };
    $err = $@;
    eval { $class->deactivate_volume($storeid, $scfg, $volname, undef, {}) };
    warn $@ if $@;
    die $err if $err;
    return;
}

sub volume_import {
    my (
        $class, $scfg, $storeid, $fh, $volname, $format, $snapshot, $base_snapshot,
        $with_snapshots, $allow_rename,
    ) = @_;

    die "drbdpool: volume import format '$format' not available\n" if $format ne 'raw+size';
    die "drbdpool: cannot import volumes together with their snapshots\n" if $with_snapshots;
    die "drbdpool: cannot import an incremental stream\n" if defined($base_snapshot);

    my (undef, $name, $vmid, undef, undef, $isBase) = $class->parse_volname($volname);
    die "drbdpool: importing a base volume is not supported; import it as vm-$vmid-* and convert\n"
        if $isBase;

    my $exists = grep { $_->{volid} eq "$storeid:$name" }
        @{ $class->list_images($storeid, $scfg, $vmid, undef) };
    if ($exists) {
        die "drbdpool: volume '$storeid:$name' already exists\n" if !$allow_rename;
        warn "volume '$storeid:$name' already exists - importing with a different name\n";
        $name = undef;
    }

    my $size = PVE::Storage::Plugin::read_common_header($fh);
    $size = _uint($size, 'size in stream header');
    die "drbdpool: import stream size $size is not a multiple of 1 KiB\n" if $size % 1024;
    die "drbdpool: import stream has size 0\n" if !$size;

    my $allocated;
    my $activated;
    eval {
        $allocated = $class->alloc_image($storeid, $scfg, $vmid, 'raw', $name, $size / 1024);
        $class->activate_volume($storeid, $scfg, $allocated, undef, {});
        $activated = 1;
        my $path = $class->path($scfg, $allocated, $storeid);
        open(my $dev, '+<', $path) or die "drbdpool: cannot open '$path' for import: $!\n";
        binmode($dev);
        _copy_exact($fh, $dev, $size, "import into $allocated");
        close($dev) or die "drbdpool: flushing '$path' failed: $!\n";
        $activated = 0;
        $class->deactivate_volume($storeid, $scfg, $allocated, undef, {});
    };
    if (my $err = $@) {
        if ($activated) {
            eval { $class->deactivate_volume($storeid, $scfg, $allocated, undef, {}) };
            warn $@ if $@;
        }
        if ($allocated) {
            eval { $class->free_image($storeid, $scfg, $allocated, 0, 'raw') };
            warn "drbdpool: could not free '$allocated' after the failed import: $@" if $@;
        }
        die $err;
    }
    return "$storeid:$allocated";
}

1;
