package PVE::Storage::LVMPlugin;

# Stand-in: registration data of pve-storage's LVMPlugin.

use strict;
use warnings;

use base qw(PVE::Storage::Plugin);

sub type { return 'lvm' }

sub plugindata {
    return {
        content => [{ images => 1, rootdir => 1 }, { images => 1 }],
        format => [{ raw => 1, qcow2 => 1 }, 'raw'],
        'sensitive-properties' => {},
    };
}

sub properties {
    return {
        vgname => { description => "Volume group name.", type => 'string', format => 'pve-storage-vgname' },
        base => { description => "Base volume.", type => 'string', format => 'pve-volume-id' },
        saferemove => { type => 'boolean' },
        saferemove_throughput => { type => 'string' },
        tagged_only => { type => 'boolean' },
    };
}

sub options {
    return {
        vgname => { fixed => 1 },
        nodes => { optional => 1 },
        shared => { optional => 1 },
        disable => { optional => 1 },
        saferemove => { optional => 1 },
        saferemove_throughput => { optional => 1 },
        content => { optional => 1 },
        base => { fixed => 1, optional => 1 },
        tagged_only => { optional => 1 },
        bwlimit => { optional => 1 },
        'snapshot-as-volume-chain' => { optional => 1 },
    };
}

1;
