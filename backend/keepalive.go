package backend

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// ServerEnforcement is the enforcement policy backends must set
// (grpc.KeepaliveEnforcementPolicy) so the bridge's keepalive pings
// (backend.keepalive.time, 20s by default and never below grpc-go's 10s
// floor) are never refused: grpc-go's default minimum is 5 minutes, and a
// server that sees pings more often closes the connection with
// ENHANCE_YOUR_CALM.
var ServerEnforcement = keepalive.EnforcementPolicy{
	MinTime:             10 * time.Second,
	PermitWithoutStream: true,
}

// NewGRPCServer is a gRPC server for a backend: ServerEnforcement, then
// opts (TLS, interceptors, stats handlers). Register a Server on it.
func NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	return grpc.NewServer(append([]grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(ServerEnforcement)}, opts...)...)
}
