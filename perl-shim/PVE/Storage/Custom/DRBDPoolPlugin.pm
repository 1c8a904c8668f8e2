package PVE::Storage::Custom::DRBDPoolPlugin;

# Proxmox VE storage plugin for drbdpool: DRBD-replicated block storage.
#
# This module is deliberately thin. Each method validates its arguments, runs
# the helper `drbdpool plugin <method>` and returns the reply in PVE's shape,
# or dies with the helper's message. All state and all decisions live in the
# helper. Running it (one JSON request on stdin, one JSON reply on stdout, see
# docs/PROTOCOL.md), bounding the wait and untainting the reply is
# DRBDPool/Helper.pm beside this file.
#
# It runs inside pvedaemon/pveproxy (perl -T), pvestatd, pvescheduler,
# pve-ha-lrm/crm and the CLIs, so: no shell, bounded waits, untaint everything.

use strict;
use warnings;

use JSON::PP ();

use PVE::INotify;
use PVE::Storage::Plugin;
# Not `use PVE::Storage`: PVE::Storage loads us from its own loader, and
# loading it from here first would run that loader before we are derived.
use PVE::Storage::Custom::DRBDPool::Helper
    qw(call_helper helper_bin scfg_for_helper untaint_uint untaint_path json_bool);

use base qw(PVE::Storage::Plugin);

# Newest PVE storage API this plugin was tested against (ApiChangeLog v15:
# volume_resize gets $snapname, volume_snapshot_info may report virtual-size).
my $TESTED_APIVER = 15;

# PVE reads this list when it parses storage.cfg and then sets shared=1 for
# our type: migration moves only the config, locks become cluster-wide.
push @PVE::Storage::Plugin::SHARED_STORAGE, 'drbdpool'
    if !grep { $_ eq 'drbdpool' } @PVE::Storage::Plugin::SHARED_STORAGE;

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

# --- volume names -----------------------------------------------------------

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

sub _vmid {
    my ($vmid) = @_;
    die "drbdpool: invalid VMID '" . ($vmid // 'undef') . "'\n"
        if !defined($vmid) || $vmid !~ m/^([1-9]\d{0,8})$/;
    return 0 + $1;
}

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
    my $res = call_helper('path', $storeid, $scfg, {
        volname => _volname($name),
        snapname => _snapname($snapname),
    });
    my $path = untaint_path($res->{path}, 'path');
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
            && JSON::PP->new->canonical->encode(scfg_for_helper($ids->{$_}))
            eq JSON::PP->new->canonical->encode(scfg_for_helper($scfg))
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
    my $size_kib = untaint_uint($size, 'size (KiB)');
    die "drbdpool: size must be at least 1 KiB\n" if $size_kib < 1;

    my $res = call_helper('alloc', $storeid, $scfg, {
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
    call_helper('free', $storeid, $scfg, {
        volname => $volname,
        is_base => json_bool($isBase),
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

    my $res = call_helper('list', $storeid, $scfg, $args);
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
    return untaint_uint($h->{size}, 'size') if defined($h->{size});
    return untaint_uint($h->{size_kib}, 'size_kib') * 1024 if defined($h->{size_kib});
    die "drbdpool: helper reply has no size\n";
}

# --- storage ---------------------------------------------------------------

sub status {
    my ($class, $storeid, $scfg, $cache) = @_;

    my $res = call_helper('status', $storeid, $scfg, {}, quiet => 1);
    return undef if ref($res) ne 'HASH'; ## no critic (ProhibitExplicitReturnUndef): used in hash constructors and PVE expects undef
    return (
        untaint_uint($res->{total}, 'total'),
        untaint_uint($res->{avail}, 'avail'),
        untaint_uint($res->{used}, 'used'),
        ($res->{active} // 1) ? 1 : 0,
    );
}

# PVE runs this before every activate_storage. The helper has no separate
# method: the store is local (pmxcfs), so "connected" means the helper is
# installed; activate_storage then checks that this node is registered.
sub check_connection {
    my ($class, $storeid, $scfg) = @_;
    my $bin = helper_bin();
    die "drbdpool: helper '$bin' not found or not executable on node '"
        . PVE::INotify::nodename() . "' (install drbdpool on every node, or set DRBDPOOL_BIN)\n"
        if !-f $bin || !-x _;
    return 1;
}

sub activate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    return if $cache && $cache->{drbdpool_activated}->{$storeid};
    call_helper('activate_storage', $storeid, $scfg, {}, quiet => 1);
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
    call_helper('activate', $storeid, $scfg, $args);
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
    return { map { $_ => json_bool($hints->{$_}) } grep { m/^[a-z0-9-]+$/ } keys %$hints };
}

sub deactivate_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $cache) = @_;

    call_helper('deactivate', $storeid, $scfg, {
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
    my $res = call_helper('size', $storeid, $scfg, {
        volname => _volname($volname),
    }, timeout => $t);
    my $size = _size_bytes($res);
    return $size if !wantarray;
    my $used = defined($res->{used}) ? untaint_uint($res->{used}, 'used') : $size;
    my $parent = defined($res->{parent}) ? _volname($res->{parent}) : undef;
    my $ctime = defined($res->{ctime}) ? untaint_uint($res->{ctime}, 'ctime') : undef;
    return ($size, 'raw', $used, $parent, $ctime);
}

sub volume_resize {
    my ($class, $scfg, $storeid, $volname, $size, $running, $snapname) = @_;

    die "drbdpool: resizing a snapshot is not supported\n" if defined($snapname);
    my $bytes = untaint_uint($size, 'size (bytes)');
    die "drbdpool: new size $bytes is not a multiple of 1024 bytes\n" if $bytes % 1024;

    call_helper('resize', $storeid, $scfg, {
        volname => _volname($volname),
        size_bytes => $bytes,
        running => json_bool($running),
    });
    return;
}

# --- snapshots ---------------------------------------------------------------

sub _snap_call {
    my ($class, $method, $scfg, $storeid, $volname, $snap, %extra) = @_;
    die "drbdpool: missing snapshot name\n" if !defined($snap);
    return call_helper($method, $storeid, $scfg, {
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
        running => json_bool($running));
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

    my $res = call_helper('snapshot_list', $storeid, $scfg, {
        volname => _volname($volname),
    });
    my $snaps = ref($res) eq 'HASH' ? ($res->{snapshots} // {}) : {};
    my $out = {};
    for my $name (keys %$snaps) {
        my $s = _snapname($name);
        my $info = ref($snaps->{$name}) eq 'HASH' ? $snaps->{$name} : {};
        $out->{$s} = {
            name => $s,
            timestamp => untaint_uint($info->{timestamp} // 0, 'timestamp'),
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
    my $res = call_helper('has_feature', $storeid, $scfg, {
        feature => $f,
        volname => _volname($volname),
        snapname => _snapname($snapname),
        running => json_bool($running),
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
    my $res = call_helper('create_base', $storeid, $scfg, { volname => _volname($volname) });
    my $new = _volname($res->{volname});
    die "drbdpool: helper returned '$new' for a base volume\n" if $new !~ m/^(?:base-[^\/]+\/)?base-/;
    return $new;
}

sub clone_image {
    my ($class, $scfg, $storeid, $volname, $vmid, $snap) = @_;

    my $res = call_helper('clone', $storeid, $scfg, {
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

    my $res = call_helper('rename', $storeid, $scfg, {
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
    $size = untaint_uint($size, 'size in stream header');
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
