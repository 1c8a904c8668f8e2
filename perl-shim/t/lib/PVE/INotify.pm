package PVE::INotify;

# Stand-in for pve-common's PVE::INotify: only nodename(). Production reads
# the short hostname once; tests choose the node with PVE_NODENAME or
# DRBDPOOL_NODE (the same variable the helper reads), so one process can act
# as pve1 and then as pve2.

use strict;
use warnings;

sub nodename {
    my $n = $ENV{PVE_NODENAME} // $ENV{DRBDPOOL_NODE};
    if (!defined($n) || $n eq '') {
        require POSIX;
        ($n) = (POSIX::uname())[1] =~ m/^([^.]+)/;
    }
    die "invalid node name '$n'\n" if $n !~ m/^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)$/;
    return $1;
}

1;
