package PVE::RPCEnvironment;

# Stand-in for pve-access-control's PVE::RPCEnvironment (not among the third-party sources), for the HA
# tier only. It is the real pve-common PVE::RESTEnvironment (which the real one extends) and grants every
# permission: the ha-manager CLI runs as root@pam, who has them all.

use strict;
use warnings;

use base qw(PVE::RESTEnvironment);

sub check { return 1 }
sub check_any { return 1 }
sub check_full { return 1 }

1;
