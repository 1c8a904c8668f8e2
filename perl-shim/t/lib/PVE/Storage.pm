package PVE::Storage;

# Stand-in for pve-storage's src/PVE/Storage.pm (libpve-storage-perl 9.1.x,
# APIVER 15 / APIAGE 6): the custom-plugin loader, init(), the storage.cfg
# parser and the wrapper functions PVE's tools call (vdisk_alloc,
# activate_volumes, path, storage_info, ...), with the same plugin calls in
# the same order. See t/README.md for what is simplified.

use strict;
use warnings;

use PVE::INotify;
use PVE::Storage::Plugin;
use PVE::Storage::DirPlugin;
use PVE::Storage::LVMPlugin;
use PVE::Storage::LvmThinPlugin;

use constant APIVER => 15;
use constant APIAGE => 6;

PVE::Storage::DirPlugin->register();
PVE::Storage::LVMPlugin->register();
PVE::Storage::LvmThinPlugin->register();

our @LOAD_WARNINGS;

# The version window check of the loader, reading APIVER at run time so tests
# can pretend to be an older or newer PVE.
sub check_plugin_api {
    my ($modname) = @_;
    die "not derived from PVE::Storage::Plugin\n" if !$modname->isa('PVE::Storage::Plugin');
    die "does not provide an api() method\n" if !$modname->can('api');
    my $apiver = __PACKAGE__->APIVER;
    my $apiage = __PACKAGE__->APIAGE;
    my $version = $modname->api();
    die "implements an API version newer than current ($version > $apiver)\n" if $version > $apiver;
    my $min_version = $apiver - $apiage;
    die "API version too old, please update the plugin ($version < $min_version)\n"
        if $version < $min_version;
    return $version;
}

# Production globs /usr/share/perl5/PVE/Storage/Custom; the stand-in looks in
# PVE_STORAGE_CUSTOM_DIR if set, else in every @INC entry.
sub _custom_plugin_files {
    my @dirs;
    if (my $d = $ENV{PVE_STORAGE_CUSTOM_DIR}) {
        @dirs = ($d);
    } else {
        @dirs = map { "$_/PVE/Storage/Custom" } grep { !ref($_) } @INC;
    }
    my %seen;
    my @files;
    for my $dir (@dirs) {
        opendir(my $dh, $dir) or next;
        for my $f (sort readdir($dh)) {
            next if $f !~ m/^([A-Za-z0-9_]+\.pm)$/; # also untaints, like dir_glob_foreach
            push @files, $1 if !$seen{$1}++;
        }
        closedir($dh);
    }
    return @files;
}

for my $file (_custom_plugin_files()) {
    my $modname = 'PVE::Storage::Custom::' . $file;
    $modname =~ s!\.pm$!!;
    my $path = 'PVE/Storage/Custom/' . $file;
    eval {
        require $path;
        my $version = check_plugin_api($modname);
        $modname->import();
        $modname->register();
        if ($version != APIVER) {
            push @LOAD_WARNINGS, "Plugin \"$modname\" is implementing an older storage API";
            warn "$LOAD_WARNINGS[-1], an upgrade is recommended\n";
        }
    };
    if ($@) {
        push @LOAD_WARNINGS, "Error loading storage plugin \"$modname\": $@";
        warn $LOAD_WARNINGS[-1];
    }
}

# Outside any eval, as in production: a duplicate property kills the load.
PVE::Storage::Plugin->init();

# --- configuration -------------------------------------------------------

our $CONFIG_TEXT;

sub set_config_text {
    my ($text) = @_;
    $CONFIG_TEXT = $text;
    return;
}

# Production: cfs_read_file('storage.cfg') from /etc/pve (pmxcfs).
sub config {
    my $raw = $CONFIG_TEXT;
    if (!defined($raw)) {
        my $file = $ENV{PVE_STORAGE_CFG} // '/etc/pve/storage.cfg';
        open(my $fh, '<', $file) or die "unable to read '$file': $!\n";
        local $/;
        $raw = <$fh>;
        close($fh);
    }
    return PVE::Storage::Plugin->parse_config('storage.cfg', $raw);
}

sub storage_config {
    my ($cfg, $storeid, $noerr) = @_;
    die "no storage ID specified\n" if !$storeid;
    my $scfg = $cfg->{ids}->{$storeid};
    die "storage '$storeid' does not exist\n" if !$noerr && !$scfg;
    return $scfg;
}

sub storage_check_node {
    my ($cfg, $storeid, $node, $noerr) = @_;
    my $scfg = storage_config($cfg, $storeid);
    if ($scfg->{nodes}) {
        $node = PVE::INotify::nodename() if !$node || $node eq 'localhost';
        if (!$scfg->{nodes}->{$node}) {
            die "storage '$storeid' is not available on node '$node'\n" if !$noerr;
            return undef;
        }
    }
    return $scfg;
}

sub storage_check_enabled {
    my ($cfg, $storeid, $node, $noerr) = @_;
    my $scfg = storage_config($cfg, $storeid);
    if ($scfg->{disable}) {
        die "storage '$storeid' is disabled\n" if !$noerr;
        return undef;
    }
    return storage_check_node($cfg, $storeid, $node, $noerr);
}

sub parse_volume_id { return PVE::Storage::Plugin::parse_volume_id(@_) }

sub parse_vmid {
    my $vmid = shift;
    die "VMID '$vmid' contains illegal characters\n" if $vmid !~ m/^\d+$/;
    return int($vmid);
}

sub _plugin_for {
    my ($cfg, $volid) = @_;
    my ($storeid, $volname) = parse_volume_id($volid);
    my $scfg = storage_config($cfg, $storeid);
    my $plugin = PVE::Storage::Plugin->lookup($scfg->{type});
    return ($plugin, $scfg, $storeid, $volname);
}

sub parse_volname {
    my ($cfg, $volid) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->parse_volname($volname);
}

# --- activation -------------------------------------------------------------

sub activate_storage {
    my ($cfg, $storeid, $cache) = @_;
    $cache = {} if !$cache;
    my $scfg = storage_check_enabled($cfg, $storeid);
    return if $cache->{activated}->{$storeid};
    my $plugin = PVE::Storage::Plugin->lookup($scfg->{type});
    if (!eval { $plugin->check_connection($storeid, $scfg) }) {
        die "connection check for storage '$storeid' failed - $@\n" if $@;
        die "storage '$storeid' is not online\n";
    }
    $plugin->activate_storage($storeid, $scfg, $cache);
    # (production: `udevadm settle` if uevents happened)
    $cache->{activated}->{$storeid} = 1;
    return;
}

sub activate_storage_list {
    my ($cfg, $storeid_list, $cache) = @_;
    $cache = {} if !$cache;
    activate_storage($cfg, $_, $cache) for @$storeid_list;
    return;
}

sub deactivate_storage {
    my ($cfg, $storeid) = @_;
    my $scfg = storage_config($cfg, $storeid);
    my $plugin = PVE::Storage::Plugin->lookup($scfg->{type});
    $plugin->deactivate_storage($storeid, $scfg, {});
    return;
}

sub activate_volumes {
    my ($cfg, $vollist, $snapname, $hints) = @_;
    return if !($vollist && scalar(@$vollist));
    my %storages = map { (parse_volume_id($_))[0] => 1 } @$vollist;
    my $cache = {};
    activate_storage_list($cfg, [sort keys %storages], $cache);
    for my $volid (@$vollist) {
        my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
        $plugin->activate_volume($storeid, $scfg, $volname, $snapname, $cache, $hints);
    }
    return;
}

sub deactivate_volumes {
    my ($cfg, $vollist, $snapname) = @_;
    return if !($vollist && scalar(@$vollist));
    my $cache = {};
    my @errlist;
    for my $volid (@$vollist) {
        my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
        eval { $plugin->deactivate_volume($storeid, $scfg, $volname, $snapname, $cache) };
        if (my $err = $@) {
            warn $err;
            push @errlist, $volid;
        }
    }
    die "volume deactivation failed: " . join(' ', @errlist) if @errlist;
    return;
}

sub path {
    my ($cfg, $volid, $snapname) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    my ($path, $owner, $vtype) = $plugin->path($scfg, $volname, $storeid, $snapname);
    return wantarray ? ($path, $owner, $vtype) : $path;
}

sub map_volume {
    my ($cfg, $volid, $snapname, $hints) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->map_volume($storeid, $scfg, $volname, $snapname, $hints);
}

sub unmap_volume {
    my ($cfg, $volid, $snapname) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->unmap_volume($storeid, $scfg, $volname, $snapname);
}

sub qemu_blockdev_options {
    my ($cfg, $volid, $machine_version, $options) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->qemu_blockdev_options($scfg, $storeid, $volname, $machine_version, $options // {});
}

# --- allocation ------------------------------------------------------------

sub vdisk_alloc {
    my ($cfg, $storeid, $vmid, $fmt, $name, $size) = @_;
    die "no storage ID specified\n" if !$storeid;
    my $scfg = storage_config($cfg, $storeid);
    die "no VMID specified\n" if !$vmid;
    $vmid = parse_vmid($vmid);
    $fmt = PVE::Storage::Plugin::default_format($scfg) if !$fmt;
    activate_storage($cfg, $storeid);
    my $plugin = PVE::Storage::Plugin->lookup($scfg->{type});
    return $plugin->cluster_lock_storage($storeid, $scfg->{shared}, undef, sub {
        my $volname = $plugin->alloc_image($storeid, $scfg, $vmid, $fmt, $name, $size);
        return "$storeid:$volname";
    });
}

# pve-storage 9.1.7's own code, unchanged but for indentation: it finds clones only
# through the base name and vmid that parse_volname returns for each listed volid
# (the `parent` field of list_images is not looked at).
sub volume_is_base_and_used {
    my ($cfg, $volid) = @_;

    my ($storeid, $volname) = parse_volume_id($volid);
    my $scfg = storage_config($cfg, $storeid);
    my $plugin = PVE::Storage::Plugin->lookup($scfg->{type});

    my ($vtype, $name, $vmid, undef, undef, $isBase, undef) = $plugin->parse_volname($volname);

    if ($isBase) {
        my $vollist = $plugin->list_images($storeid, $scfg);
        foreach my $info (@$vollist) {
            my (undef, $tmpvolname) = parse_volume_id($info->{volid});
            my $basename = undef;
            my $basevmid = undef;

            eval {
                (undef, undef, undef, $basename, $basevmid) =
                    $plugin->parse_volname($tmpvolname);
            };

            if ($basename && defined($basevmid) && $basevmid == $vmid && $basename eq $name) {
                return 1;
            }
        }
    }
    return 0;
}

our @CLEANUP_WORKERS_RUN;

sub vdisk_free {
    my ($cfg, $volid) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    activate_storage($cfg, $storeid);
    my $cleanup_worker;
    $plugin->cluster_lock_storage($storeid, $scfg->{shared}, undef, sub {
        die "base volume '$volname' is still in use by linked clones\n"
            if volume_is_base_and_used($cfg, $volid);
        my (undef, undef, undef, undef, undef, $isBase, $format) = $plugin->parse_volname($volname);
        $cleanup_worker = $plugin->free_image($storeid, $scfg, $volname, $isBase, $format);
    });
    return if !$cleanup_worker;
    # production: fork_worker('imgdel', ...) after the lock is released
    push @CLEANUP_WORKERS_RUN, $volid;
    $cleanup_worker->();
    return;
}

sub vdisk_list {
    my ($cfg, $storeid, $vmid, $vollist, $ctype) = @_;
    my $ids = $cfg->{ids};
    storage_check_enabled($cfg, $storeid) if $storeid;
    my $res = $storeid ? { $storeid => [] } : {};
    my @storage_list;
    if ($vollist) {
        for my $volid (@$vollist) {
            my ($sid) = parse_volume_id($volid);
            next if !defined($ids->{$sid});
            next if !storage_check_enabled($cfg, $sid, undef, 1);
            push @storage_list, $sid;
        }
    } else {
        for my $sid (sort keys %$ids) {
            next if $storeid && $storeid ne $sid;
            next if !storage_check_enabled($cfg, $sid, undef, 1);
            my $content = $ids->{$sid}->{content};
            next if defined($ctype) && !$content->{$ctype};
            next if !($content->{rootdir} || $content->{images});
            push @storage_list, $sid;
        }
    }
    my $cache = {};
    activate_storage_list($cfg, \@storage_list, $cache);
    for my $sid (@storage_list) {
        next if $storeid && $storeid ne $sid;
        my $scfg = $ids->{$sid};
        my $plugin = PVE::Storage::Plugin->lookup($scfg->{type});
        $res->{$sid} = $plugin->list_images($sid, $scfg, $vmid, $vollist, $cache);
        @{ $res->{$sid} } = sort { lc($a->{volid}) cmp lc($b->{volid}) } @{ $res->{$sid} };
    }
    return $res;
}

sub vdisk_clone {
    my ($cfg, $volid, $vmid, $snap) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    activate_storage($cfg, $storeid);
    return $plugin->cluster_lock_storage($storeid, $scfg->{shared}, undef, sub {
        my $new = $plugin->clone_image($scfg, $storeid, $volname, $vmid, $snap);
        return "$storeid:$new";
    });
}

sub vdisk_create_base {
    my ($cfg, $volid) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    activate_storage($cfg, $storeid);
    return $plugin->cluster_lock_storage($storeid, $scfg->{shared}, undef, sub {
        my $new = $plugin->create_base($storeid, $scfg, $volname);
        return "$storeid:$new";
    });
}

sub rename_volume {
    my ($cfg, $source_volid, $target_vmid, $target_volname) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $source_volid);
    activate_storage($cfg, $storeid);
    return $plugin->cluster_lock_storage($storeid, $scfg->{shared}, undef, sub {
        return $plugin->rename_volume($scfg, $storeid, $volname, $target_vmid, $target_volname);
    });
}

# --- sizes, snapshots, features ---------------------------------------------

sub volume_size_info {
    my ($cfg, $volid, $timeout) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_size_info($scfg, $storeid, $volname, $timeout);
}

sub volume_resize {
    my ($cfg, $volid, $size, $running, $snapname) = @_;
    my $padding = (1024 - $size % 1024) % 1024;
    $size = $size + $padding;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_resize($scfg, $storeid, $volname, $size, $running, $snapname);
}

sub volume_snapshot {
    my ($cfg, $volid, $snap) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_snapshot($scfg, $storeid, $volname, $snap);
}

sub volume_snapshot_rollback {
    my ($cfg, $volid, $snap) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    $plugin->volume_rollback_is_possible($scfg, $storeid, $volname, $snap);
    return $plugin->volume_snapshot_rollback($scfg, $storeid, $volname, $snap);
}

sub volume_rollback_is_possible {
    my ($cfg, $volid, $snap, $blockers) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_rollback_is_possible($scfg, $storeid, $volname, $snap, $blockers);
}

sub volume_snapshot_delete {
    my ($cfg, $volid, $snap, $running) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_snapshot_delete($scfg, $storeid, $volname, $snap, $running);
}

sub volume_snapshot_info {
    my ($cfg, $volid) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_snapshot_info($scfg, $storeid, $volname);
}

sub volume_has_feature {
    my ($cfg, $feature, $volid, $snap, $running, $opts) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_has_feature($scfg, $feature, $storeid, $volname, $snap, $running, $opts);
}

sub volume_qemu_snapshot_method {
    my ($cfg, $volid) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_qemu_snapshot_method($storeid, $scfg, $volname);
}

sub storage_can_replicate {
    my ($cfg, $storeid, $format) = @_;
    my $scfg = storage_config($cfg, $storeid);
    my $plugin = PVE::Storage::Plugin->lookup($scfg->{type});
    return $plugin->storage_can_replicate($scfg, $storeid, $format);
}

# --- status ------------------------------------------------------------------

sub storage_info {
    my ($cfg, $content, $includeformat) = @_;
    my $ids = $cfg->{ids};
    my $info = {};
    my @ctypes = defined($content) ? split(/[,;\s]+/, $content) : ();
    for my $storeid (sort keys %$ids) {
        my $enabled = defined(storage_check_enabled($cfg, $storeid, undef, 1));
        if (defined($content)) {
            next if !$enabled || !grep { $ids->{$storeid}->{content}->{$_} } @ctypes;
        }
        $info->{$storeid} = {
            type => $ids->{$storeid}->{type},
            total => 0,
            avail => 0,
            used => 0,
            shared => $ids->{$storeid}->{shared} ? 1 : 0,
            content => PVE::Storage::Plugin::content_hash_to_string($ids->{$storeid}->{content}),
            active => 0,
            enabled => $enabled ? 1 : 0,
        };
    }
    my $cache = {};
    for my $storeid (sort keys %$info) {
        next if !$info->{$storeid}->{enabled};
        my $scfg = $ids->{$storeid};
        my $plugin = PVE::Storage::Plugin->lookup($scfg->{type});
        if ($includeformat) {
            $info->{$storeid}->{format} = $plugin->get_formats($scfg, $storeid);
        }
        eval { activate_storage($cfg, $storeid, $cache) };
        if (my $err = $@) {
            warn $err;
            next;
        }
        my ($total, $avail, $used, $active) = eval { $plugin->status($storeid, $scfg, $cache) };
        warn $@ if $@;
        next if !$active;
        $info->{$storeid}->{total} = int($total);
        $info->{$storeid}->{avail} = int($avail);
        $info->{$storeid}->{used} = int($used);
        $info->{$storeid}->{active} = $active;
    }
    return $info;
}

# --- export / import -------------------------------------------------------

sub volume_export {
    my ($cfg, $fh, $volid, $format, $snapshot, $base_snapshot, $with_snapshots) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_export($scfg, $storeid, $fh, $volname, $format, $snapshot, $base_snapshot,
        $with_snapshots);
}

sub volume_import {
    my ($cfg, $fh, $volid, $format, $snapshot, $base_snapshot, $with_snapshots, $allow_rename) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_import($scfg, $storeid, $fh, $volname, $format, $snapshot, $base_snapshot,
        $with_snapshots, $allow_rename) // $volid;
}

sub volume_export_formats {
    my ($cfg, $volid, $snapshot, $base_snapshot, $with_snapshots) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_export_formats($scfg, $storeid, $volname, $snapshot, $base_snapshot,
        $with_snapshots);
}

sub volume_import_formats {
    my ($cfg, $volid, $snapshot, $base_snapshot, $with_snapshots) = @_;
    my ($plugin, $scfg, $storeid, $volname) = _plugin_for($cfg, $volid);
    return $plugin->volume_import_formats($scfg, $storeid, $volname, $snapshot, $base_snapshot,
        $with_snapshots);
}

sub volume_transfer_formats {
    my ($cfg, $src_volid, $dst_volid, $snapshot, $base_snapshot, $with_snapshots) = @_;
    my @export = volume_export_formats($cfg, $src_volid, $snapshot, $base_snapshot, $with_snapshots);
    my @import = volume_import_formats($cfg, $dst_volid, $snapshot, $base_snapshot, $with_snapshots);
    my %import = map { $_ => 1 } @import;
    return grep { $import{$_} } @export;
}

1;
