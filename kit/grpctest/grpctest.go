// Package grpctest serves gRPC on a loopback port for a test and reads a
// Delivery stream the way a bridge does. It imports nothing of the
// product but the contract, so tests of every layer may use it.
package grpctest

import (
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
)

// TB is what these helpers need of a *testing.T or *testing.B.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Serve runs gs with the services register adds on a free loopback port
// until the test ends, and returns its address.
func Serve(t TB, gs *grpc.Server, register func(grpc.ServiceRegistrar)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("grpctest: %v", err)
	}
	register(gs)
	done := make(chan struct{})
	go func() { _ = gs.Serve(ln); close(done) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return ln.Addr().String()
}

// Dial is a plain-text client connection to addr, closed when the test ends.
func Dial(t TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpctest: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// NextAck receives frames on st until an ACK, failing the test if the
// stream ends first.
func NextAck(t TB, st v1.Delivery_StreamClient) *v1.Ack {
	t.Helper()
	for {
		f, err := st.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if a := f.GetAck(); a != nil {
			return a
		}
	}
}
