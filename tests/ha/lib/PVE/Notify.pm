package PVE::Notify;

# Stand-in for pve-cluster's PVE::Notify, for the HA tier only: the real one is a front of the Rust
# Proxmox::RS::Notify (libpve-rs-perl, not available here). PVE::HA::Env::PVE2 loads it to send fence
# notifications, which the ha-manager rules commands never do; calling it is an error.

use strict;
use warnings;

sub AUTOLOAD {
    our $AUTOLOAD;
    return if $AUTOLOAD =~ /::DESTROY$/;
    die "PVE::Notify stand-in: $AUTOLOAD is not available in the HA tier\n";
}

1;
