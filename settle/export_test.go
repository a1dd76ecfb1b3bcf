package settle

// PolicyDefaults is a zero Policy with its defaults, for the tests of
// package settle_test.
func PolicyDefaults() Policy { return Policy{}.withDefaults() }
