package backend

import (
	"context"
	"crypto/subtle"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	v1 "github.com/edgebridge/edgebridge/api/edgebridge/v1"
	"github.com/edgebridge/edgebridge/internal/tlsfiles"
)

// TokenAuth returns server options that refuse every call (the Delivery
// stream and health checks alike) without "authorization: Bearer <token>",
// with codes.Unauthenticated. Use it together with TLS.
func TokenAuth(token string) []grpc.ServerOption {
	return tokenAuth(func() (string, error) { return token, nil })
}

// TokenFileAuth is TokenAuth with the token read from path (trimmed) at
// every call, so a rotated token file needs no restart. A file that cannot
// be read refuses every call.
func TokenFileAuth(path string) []grpc.ServerOption {
	return tokenAuth(func() (string, error) { return ReadTokenFile(path) })
}

// ReadTokenFile reads a bearer token: the file's content, trimmed.
func ReadTokenFile(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return tok, nil
}

func tokenAuth(token func() (string, error)) []grpc.ServerOption {
	check := func(ctx context.Context) error {
		tok, err := token()
		if err != nil {
			return status.Error(codes.Unavailable, "backend: cannot read its bearer token")
		}
		want := []byte(v1.BearerPrefix + tok)
		md, _ := metadata.FromIncomingContext(ctx)
		for _, got := range md.Get(v1.AuthorizationKey) {
			if subtle.ConstantTimeCompare([]byte(got), want) == 1 {
				return nil
			}
		}
		return status.Error(codes.Unauthenticated, "backend: missing or wrong bearer token")
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := check(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := check(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// ServerTLS returns the server option for TLS with certFile and keyFile;
// with a clientCAFile it is mutual TLS: every bridge must present a
// certificate that CA signed, or its handshake fails. All three files are
// read again when they change, so certificates rotate without a restart
// and connections already open keep theirs.
func ServerTLS(certFile, keyFile, clientCAFile string) (grpc.ServerOption, error) {
	tc, err := tlsfiles.Files{CertFile: certFile, KeyFile: keyFile, CAFile: clientCAFile}.Server()
	if err != nil {
		return nil, err
	}
	return grpc.Creds(credentials.NewTLS(tc)), nil
}
