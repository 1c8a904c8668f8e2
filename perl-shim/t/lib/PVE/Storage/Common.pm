package PVE::Storage::Common;

# Stand-in for pve-storage's PVE::Storage::Common: only align_size_up.

use strict;
use warnings;

sub align_size_up {
    my ($size, $granularity) = @_;
    my $padding = ($granularity - $size % $granularity) % $granularity;
    return $size + $padding;
}

1;
