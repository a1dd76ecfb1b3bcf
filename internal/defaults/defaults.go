// Package defaults fills a setting left unset with its default: the one
// shape of every component's withDefaults and of config.ApplyDefaults.
package defaults

// Number is a setting where zero or below means "not set".
type Number interface {
	~int | ~int32 | ~int64 | ~uint32 | ~float64 // ~int64 takes time.Duration
}

// Positive sets *p to def when *p is zero or negative.
func Positive[T Number](p *T, def T) {
	if *p <= 0 {
		*p = def
	}
}

// Zero sets *p to def when *p is its type's zero value ("", 0): where a
// negative number has a meaning of its own (off).
func Zero[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}
