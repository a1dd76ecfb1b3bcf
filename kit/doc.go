// Package kit is the folder of what drives edgebridge from outside, one
// layer above the product and below cmd and the tests:
//
//   - bench: the bench (edgebridge bench), its environment and report;
//   - devicesim: simulated devices (demo, bench, tests);
//   - proc: child processes (the bridge, paymentd, Mosquitto) for the
//     integration and deploy tests and the bench;
//   - testpki, disktest: throwaway certificates and a filesystem that
//     fills up, for tests at every layer (they import no product package).
//
// It is public, not internal, so that a team writing a backend can drive
// the real bridge with the same simulated devices; it makes no promise of
// compatibility between versions.
//
// layers_test.go keeps the folders' order: no package imports from a
// layer above its own.
package kit
