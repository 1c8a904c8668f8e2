package PVE::Storage::DirPlugin;

# Stand-in: registration data of pve-storage's DirPlugin (the properties it
# owns matter for the duplicate-property check).

use strict;
use warnings;

use base qw(PVE::Storage::Plugin);

sub type { return 'dir' }

sub plugindata {
    return {
        content => [
            { images => 1, rootdir => 1, vztmpl => 1, iso => 1, backup => 1, snippets => 1, none => 1, import => 1 },
            { images => 1, rootdir => 1 },
        ],
        format => [{ raw => 1, qcow2 => 1, vmdk => 1, subvol => 1 }, 'raw'],
        'sensitive-properties' => {},
    };
}

sub properties {
    return {
        path => { description => "File system path.", type => 'string', format => 'pve-storage-path' },
        mkdir => { type => 'boolean' },
        'create-base-path' => { type => 'boolean' },
        'create-subdirs' => { type => 'boolean' },
        is_mountpoint => { type => 'string' },
    };
}

sub options {
    return {
        path => { fixed => 1 },
        nodes => { optional => 1 },
        shared => { optional => 1 },
        disable => { optional => 1 },
        content => { optional => 1 },
        format => { optional => 1 },
        mkdir => { optional => 1 },
        is_mountpoint => { optional => 1 },
        bwlimit => { optional => 1 },
        preallocation => { optional => 1 },
        'prune-backups' => { optional => 1 },
    };
}

1;
