package grpcout

import (
	"time"

	"google.golang.org/grpc/keepalive"
)

// ClientKeepalive are the bridge's HTTP/2 keepalive parameters, suited to a
// WAN link from an edge site: a ping after 20s of silence, 10s to answer.
var ClientKeepalive = keepalive.ClientParameters{
	Time:                20 * time.Second,
	Timeout:             10 * time.Second,
	PermitWithoutStream: true,
}

// ServerEnforcement is the enforcement policy backends must set so the
// bridge's keepalive pings are never refused (grpc-go's default minimum is
// 5 minutes, which would make the server close the connection with
// ENHANCE_YOUR_CALM).
var ServerEnforcement = keepalive.EnforcementPolicy{
	MinTime:             10 * time.Second,
	PermitWithoutStream: true,
}
