package PVE::Storage::Plugin;

# Stand-in for pve-storage's src/PVE/Storage/Plugin.pm (libpve-storage-perl
# 9.1.x): the base class every storage plugin inherits. Method names and
# argument orders follow the real file; the file/dir implementations are
# replaced by dies where the real ones need a `path` storage, so a block
# plugin that forgets to override one fails loudly here as it would in PVE.

use strict;
use warnings;

use PVE::Storage::Common ();

use base qw(PVE::SectionConfig);

our @SHARED_STORAGE = (
    'iscsi', 'nfs', 'cifs', 'rbd', 'cephfs', 'iscsidirect', 'zfs', 'drbd', 'pbs',
);

our $MAX_VOLUMES_PER_GUEST = 1024;

my $defaultData = {
    propertyList => {
        type => { description => "Storage type." },
        storage => { type => 'string', description => 'The storage identifier.' },
        nodes => { type => 'string', optional => 1 },
        content => { type => 'string', optional => 1 },
        disable => { type => 'boolean', optional => 1 },
        shared => { type => 'boolean', optional => 1 },
        format => { type => 'string', optional => 1 },
        bwlimit => { type => 'string', optional => 1 },
        'prune-backups' => { type => 'string', optional => 1 },
        preallocation => { type => 'string', enum => [qw(off metadata falloc full)], optional => 1 },
        'snapshot-as-volume-chain' => { type => 'boolean', optional => 1 },
    },
};

sub private { return $defaultData }

sub content_hash_to_string {
    my $hash = shift;
    return join(',', grep { $hash->{$_} } sort keys %$hash);
}

sub valid_content_types {
    my ($type) = @_;
    my $def = $defaultData->{plugindata}->{$type};
    return {} if !$def;
    return $def->{content}->[0];
}

sub sensitive_properties {
    my ($type) = @_;
    my $data = $defaultData->{plugindata}->{$type};
    if (my $sp = $data->{'sensitive-properties'}) {
        return [sort keys %$sp];
    }
    return [qw(encryption-key keyring master-pubkey password)];
}

sub storage_has_feature {
    my ($type, $feature) = @_;
    my $data = $defaultData->{plugindata}->{$type};
    return $data->{features} ? $data->{features}->{$feature} : undef;
}

sub parse_lvm_name {
    my ($name, $noerr) = @_;
    if ($name !~ m/^[a-z0-9][a-z0-9\-\_\.]*[a-z0-9]$/i) {
        return undef if $noerr;
        die "lvm name '$name' contains illegal characters\n";
    }
    return $name;
}

sub parse_volume_id {
    my ($volid, $noerr) = @_;
    if ($volid =~ m/^([a-z][a-z0-9\-\_\.]*[a-z0-9]):(.+)$/i) {
        return wantarray ? ($1, $2) : $1;
    }
    return undef if $noerr;
    die "unable to parse volume ID '$volid'\n";
}

sub decode_value {
    my ($class, $type, $key, $value) = @_;

    my $def = $defaultData->{plugindata}->{$type};
    if ($key eq 'content') {
        my $valid = $def->{content}->[0];
        my $res = {};
        for my $c (split(/[,;\s]+/, $value)) {
            next if $c eq '';
            if (!$valid->{$c}) {
                warn "storage does not support content type '$c'\n";
                next;
            }
            $res->{$c} = 1;
        }
        die "storage does not support content type 'none'\n" if !%$res && !$valid->{none};
        return $res;
    } elsif ($key eq 'nodes') {
        return { map { $_ => 1 } grep { m/^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$/ } split(/[,;\s]+/, $value) };
    }
    return $value;
}

sub parse_config {
    my ($class, $filename, $raw) = @_;

    my $cfg = $class->SUPER::parse_config($filename, $raw);
    my $ids = $cfg->{ids};

    # (production also forces a 'local' dir storage here; irrelevant for us)
    for my $storeid (keys %$ids) {
        my $d = $ids->{$storeid};
        my $type = $d->{type};
        my $def = $defaultData->{plugindata}->{$type};
        if ($def->{content}) {
            $d->{content} = $def->{content}->[1] if !$d->{content};
        }
        if (grep { $_ eq $type } @SHARED_STORAGE) {
            $d->{shared} = 1;
        }
    }
    return $cfg;
}

sub default_format {
    my ($scfg) = @_;
    my $type = $scfg->{type};
    my $def = $defaultData->{plugindata}->{$type};
    my $def_format = 'raw';
    my $valid_formats = [$def_format];
    if (defined($def->{format})) {
        $def_format = $scfg->{format} || $def->{format}->[1];
        $valid_formats = [sort keys %{ $def->{format}->[0] }];
    }
    return wantarray ? ($def_format, $valid_formats) : $def_format;
}

# --- storage implementation (base behaviour) -------------------------------

sub get_formats {
    my ($class, $scfg, $storeid) = @_;
    my $pd = $defaultData->{plugindata}->{ $scfg->{type} };
    return { default => 'raw', valid => { raw => 1 } } if !defined($pd->{format});
    return { default => $scfg->{format} || $pd->{format}->[1], valid => { %{ $pd->{format}->[0] } } };
}

sub on_add_hook { return undef }
sub on_update_hook { return undef }
sub on_update_hook_full {
    my ($class, $storeid, $scfg, $update, $delete, $sensitive) = @_;
    return $class->on_update_hook($storeid, $update, %{ $sensitive // {} });
}
sub on_delete_hook { return undef }

# Production: a local flock for non-shared storage, the pmxcfs lock
# `storage-<id>` (10 s to acquire, 60 s to run) for shared storage. Here:
# run $func and record which kind of lock production would have taken.
our @LOCKS_TAKEN;
sub cluster_lock_storage {
    my ($class, $storeid, $shared, $timeout, $func, @param) = @_;
    push @LOCKS_TAKEN, [$storeid, $shared ? 'cluster' : 'local'];
    return $func->(@param);
}

sub parse_volname {
    my ($class, $volname) = @_;
    die "unable to parse directory volume name '$volname'\n";
}

sub get_subdir {
    my ($class, $scfg, $vtype) = @_;
    die "storage definition has no path\n" if !$scfg->{path};
    return "$scfg->{path}/$vtype";
}

sub filesystem_path {
    my ($class, $scfg, $volname, $snapname) = @_;
    my ($vtype, $name, $vmid) = $class->parse_volname($volname);
    my $dir = $class->get_subdir($scfg, $vtype);
    my $path = "$dir/$vmid/$name";
    return wantarray ? ($path, $vmid, $vtype) : $path;
}

sub path {
    my ($class, $scfg, $volname, $storeid, $snapname) = @_;
    return $class->filesystem_path($scfg, $volname, $snapname);
}

sub create_base {
    my ($class, $storeid, $scfg, $volname) = @_;
    die "storage definition has no path\n" if !$scfg->{path};
    die "create_base is not implemented in the stand-in for path storages\n";
}

sub get_next_vm_diskname {
    my ($disk_list, $storeid, $vmid, $fmt, $scfg, $add_fmt_suffix) = @_;
    $fmt //= '';
    my $prefix = ($fmt eq 'subvol') ? 'subvol' : 'vm';
    my $suffix = $add_fmt_suffix ? ".$fmt" : '';
    my %ids;
    for my $disk (@$disk_list) {
        $ids{$2} = 1 if $disk =~ m/(vm|base)-$vmid-disk-(\d+)$suffix/;
    }
    for (my $i = 0; $i < $MAX_VOLUMES_PER_GUEST; $i++) {
        return "$prefix-$vmid-disk-$i$suffix" if !$ids{$i};
    }
    die "unable to allocate an image name for VM $vmid in storage '$storeid'\n";
}

sub find_free_diskname {
    my ($class, $storeid, $scfg, $vmid, $fmt, $add_fmt_suffix) = @_;
    my $disks = $class->list_images($storeid, $scfg, $vmid);
    my $disk_list = [map { $_->{volid} } @$disks];
    return get_next_vm_diskname($disk_list, $storeid, $vmid, $fmt, $scfg, $add_fmt_suffix);
}

sub clone_image {
    my ($class, $scfg, $storeid, $volname, $vmid, $snap) = @_;
    die "storage definition has no path\n" if !$scfg->{path};
    die "clone_image is not implemented in the stand-in for path storages\n";
}

sub alloc_image {
    my ($class, $storeid, $scfg, $vmid, $fmt, $name, $size) = @_;
    $class->get_subdir($scfg, 'images'); # dies without a path, as in production
    die "alloc_image is not implemented in the stand-in for path storages\n";
}

sub free_image {
    my ($class, $storeid, $scfg, $volname, $isBase, $format) = @_;
    $class->filesystem_path($scfg, $volname);
    die "free_image is not implemented in the stand-in for path storages\n";
}

sub list_images {
    my ($class, $storeid, $scfg, $vmid, $vollist, $cache) = @_;
    $class->get_subdir($scfg, 'images');
    return [];
}

sub list_volumes {
    my ($class, $storeid, $scfg, $vmid, $content_types) = @_;
    my $res = [];
    my $ctypes = { map { $_ => 1 } @$content_types };
    if ($ctypes->{images} || $ctypes->{rootdir}) {
        my $data = $class->list_images($storeid, $scfg, $vmid);
        for my $item (@$data) {
            # production looks the vmid up in the cluster vmlist; we cannot
            $item->{content} = $ctypes->{images} ? 'images' : 'rootdir';
            push @$res, $item;
        }
    }
    return $res;
}

sub status {
    my ($class, $storeid, $scfg, $cache) = @_;
    die "storage definition has no path\n" if !$scfg->{path};
    return (0, 0, 0, 0);
}

sub check_connection { return 1 }
sub activate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    die "storage definition has no path\n" if !$scfg->{path};
    return;
}
sub deactivate_storage { return }

sub map_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $hints) = @_;
    my ($path) = $class->path($scfg, $volname, $storeid, $snapname);
    return $path;
}
sub unmap_volume { return 1 }

sub activate_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $cache, $hints) = @_;
    my $path = $class->filesystem_path($scfg, $volname, $snapname);
    die "volume '$storeid:$volname' does not exist\n" if !-e $path;
    return;
}
sub deactivate_volume { return }

sub qemu_blockdev_options {
    my ($class, $scfg, $storeid, $volname, $machine_version, $options) = @_;
    my ($path) = $class->path($scfg, $volname, $storeid, $options->{'snapshot-name'});
    return { driver => ($path =~ m|^/dev/| ? 'host_device' : 'file'), filename => $path };
}

sub volume_size_info {
    my ($class, $scfg, $storeid, $volname, $timeout) = @_;
    my $path = $class->filesystem_path($scfg, $volname);
    my $size = -s $path;
    die "volume_size_info: cannot stat '$path'\n" if !defined($size);
    return wantarray ? ($size, 'raw', $size, undef, undef) : $size;
}

sub volume_resize {
    my ($class, $scfg, $storeid, $volname, $size, $running, $snapname) = @_;
    die "can't resize this image format\n";
}

sub volume_snapshot { die "can't snapshot this image format\n" }
sub volume_rollback_is_possible { return 1 }
sub volume_snapshot_rollback { die "can't rollback this image format\n" }
sub volume_snapshot_delete { die "can't delete snapshot for this image format\n" }
sub volume_snapshot_info { return {} }
sub rename_snapshot { die "rename_snapshot is not supported by this storage\n" }
sub volume_snapshot_needs_fsfreeze { return 0 }
sub volume_qemu_snapshot_method {
    my ($class, $storeid, $scfg, $volname) = @_;
    return 'storage';
}
sub volume_has_feature { return undef }
sub storage_can_replicate { return 0 }
sub get_volume_attribute { return undef }
sub update_volume_attribute { die "attributes are not supported by the stand-in\n" }

sub rename_volume {
    my ($class, $scfg, $storeid, $source_volname, $target_vmid, $target_volname) = @_;
    die "not implemented in storage plugin '$class'\n";
}

# Real header helpers (Plugin.pm write_common_header/read_common_header).
sub write_common_header($$) {
    my ($fh, $image_size_in_bytes) = @_;
    syswrite($fh, pack("Q<", $image_size_in_bytes), 8);
}

sub read_common_header($) {
    my ($fh) = @_;
    sysread($fh, my $size, 8);
    $size = unpack('Q<', $size);
    die "import: no size found in export header, aborting.\n" if !defined($size);
    return $size;
}

sub volume_export {
    my ($class, $scfg, $storeid, $fh, $volname, $format, $snapshot, $base_snapshot, $with_snapshots) = @_;
    die "volume export format $format not available for $class\n";
}

sub volume_export_formats { return () }

sub volume_import {
    my ($class, $scfg, $storeid, $fh, $volname, $format, $snapshot, $base_snapshot, $with_snapshots,
        $allow_rename) = @_;
    die "volume import format '$format' not available for $class\n";
}

sub volume_import_formats { return () }

1;
