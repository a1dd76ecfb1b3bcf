package grpcout

// WithDefaults is c with its defaults, for the tests of package grpcout_test.
func WithDefaults(c Config) Config { return c.withDefaults() }
