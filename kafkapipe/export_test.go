package kafkapipe

// ConsumerDefaults is a zero ConsumerConfig with its defaults, for the
// tests of package kafkapipe_test.
func ConsumerDefaults() ConsumerConfig { return ConsumerConfig{}.withDefaults() }
