package PVE::Storage::LvmThinPlugin;

# Stand-in: registration data of pve-storage's LvmThinPlugin.

use strict;
use warnings;

use base qw(PVE::Storage::LVMPlugin);

sub type { return 'lvmthin' }

sub plugindata {
    return {
        content => [{ images => 1, rootdir => 1 }, { images => 1, rootdir => 1 }],
        'sensitive-properties' => {},
    };
}

sub properties {
    return {
        thinpool => { description => "LVM thin pool LV name.", type => 'string', format => 'pve-storage-vgname' },
    };
}

sub options {
    return {
        thinpool => { fixed => 1 },
        vgname => { fixed => 1 },
        nodes => { optional => 1 },
        disable => { optional => 1 },
        content => { optional => 1 },
        bwlimit => { optional => 1 },
    };
}

1;
