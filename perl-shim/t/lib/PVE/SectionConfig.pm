package PVE::SectionConfig;

# Stand-in for pve-common's PVE::SectionConfig: the parts a storage plugin
# meets. register() records the plugin, init() merges all properties() and
# dies on a duplicate name (exactly what makes all of PVE::Storage fail to
# load in production), parse_config() reads the storage.cfg section format.

use strict;
use warnings;

sub private { die "overwrite me" }

sub register {
    my ($class) = @_;

    my $type = $class->type();
    my $pdata = $class->private();
    die "duplicate plugin registration (type = $type)\n" if defined($pdata->{plugins}->{$type});
    $pdata->{plugindata}->{$type} = $class->plugindata();
    $pdata->{plugins}->{$type} = $class;
    return;
}

sub type { die "overwrite me" }
sub properties { return {} }
sub options { return {} }
sub plugindata { return {} }

sub init {
    my ($class) = @_;

    my $pdata = $class->private();
    $pdata->{$_} //= {} for qw(options plugins plugindata propertyList);

    my $plugins = $pdata->{plugins};
    my $propertyList = $pdata->{propertyList};

    for my $type (sort keys %$plugins) {
        my $props = $plugins->{$type}->properties();
        for my $p (sort keys %$props) {
            die "duplicate property '$p'" if defined($propertyList->{$p});
            $propertyList->{$p} = { %{ $props->{$p} }, optional => 1 };
        }
    }
    for my $type (sort keys %$plugins) {
        my $opts = $plugins->{$type}->options();
        for my $p (sort keys %$opts) {
            die "undefined property '$p'" if !$propertyList->{$p};
        }
        $opts->{type} = { optional => 1 };
        $pdata->{options}->{$type} = $opts;
    }
    $propertyList->{type}->{type} = 'string';
    $propertyList->{type}->{enum} = [sort keys %$plugins];
    return;
}

sub lookup {
    my ($class, $type) = @_;
    my $plugin = $class->private()->{plugins}->{$type};
    die "unknown section type '$type'\n" if !$plugin;
    return $plugin;
}

sub lookup_types {
    my ($class) = @_;
    return [sort keys %{ $class->private()->{plugins} }];
}

sub decode_value { my ($class, $type, $key, $value) = @_; return $value }

sub parse_section_header {
    my ($class, $line) = @_;
    if ($line =~ m/^(\S+):\s*(\S+)\s*$/) {
        return (lc($1), $2, undef, {});
    }
    return undef;
}

# Simplified JSON-schema value check (enum, integer range, boolean).
sub _check_value {
    my ($schema, $key, $value) = @_;
    if (my $enum = $schema->{enum}) {
        die "value '$value' does not have a value in the enumeration '" . join(', ', @$enum) . "'\n"
            if !grep { $_ eq $value } @$enum;
    }
    my $t = $schema->{type} // 'string';
    if ($t eq 'integer') {
        die "type check ('integer') failed - got '$value'\n" if $value !~ m/^-?\d+$/;
        die "value must have a minimum value of $schema->{minimum}\n"
            if defined($schema->{minimum}) && $value < $schema->{minimum};
        die "value must have a maximum value of $schema->{maximum}\n"
            if defined($schema->{maximum}) && $value > $schema->{maximum};
    } elsif ($t eq 'boolean') {
        die "type check ('boolean') failed - got '$value'\n" if $value !~ m/^(0|1|yes|no|on|off)$/i;
    }
    return;
}

sub parse_config {
    my ($class, $filename, $raw) = @_;

    my $pdata = $class->private();
    my $ids = {};
    my $order = {};
    my $errors = [];
    my $pri = 0;

    my @lines = split(/\n/, $raw // '');
    my $i = 0;
    while ($i < @lines) {
        my $line = $lines[$i++];
        next if $line =~ m/^\s*(#.*)?$/;
        my ($type, $sectionId, $errmsg) = $class->parse_section_header($line);
        if (!$type) {
            warn "$filename: ignore line " . $i . " - unable to parse section header\n";
            next;
        }
        my $plugin = $pdata->{plugins}->{$type};
        if (!$plugin) {
            # production: the section is skipped with an error, other storages still work
            push @$errors, "$filename: unknown section type '$type'";
            warn "$errors->[-1]\n";
            $i++ while $i < @lines && $lines[$i] =~ m/^\s+\S/;
            next;
        }
        my $config = { type => $type };
        my $opts = $pdata->{options}->{$type};
        while ($i < @lines && $lines[$i] =~ m/^\s+(\S.*)$/) {
            my $kv = $1;
            $i++;
            my ($k, $v) = $kv =~ m/^(\S+)(?:\s+(.*?))?\s*$/;
            $v //= 1;
            eval {
                die "unexpected property '$k'\n" if !$opts->{$k};
                die "duplicate attribute\n" if exists($config->{$k});
                _check_value($pdata->{propertyList}->{$k} // {}, $k, $v);
                $config->{$k} = $class->decode_value($type, $k, $v);
            };
            if (my $err = $@) {
                push @$errors, "$filename: section '$sectionId' - $k: $err";
                warn $errors->[-1];
            }
        }
        for my $k (sort keys %$opts) {
            next if $opts->{$k}->{optional} || exists($config->{$k});
            push @$errors, "$filename: section '$sectionId' - missing value for required option '$k'";
            warn "$errors->[-1]\n";
        }
        $ids->{$sectionId} = $config;
        $order->{$sectionId} = $pri++;
    }
    return { ids => $ids, order => $order, errors => $errors };
}

1;
