package kafkapipe

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// Security is how kafkapipe connects to the brokers: TLS, SASL, both or
// neither (the zero value). The producer, the consumer group, its fetchers
// and the admin requests all use it.
type Security struct {
	TLS  *tls.Config
	SASL sasl.Mechanism
}

func (s Security) transport() *kafka.Transport { return &kafka.Transport{TLS: s.TLS, SASL: s.SASL} }

// dialer is kafka-go's default dialer with the security added.
func (s Security) dialer() *kafka.Dialer {
	return &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true, TLS: s.TLS, SASLMechanism: s.SASL}
}

// SASL mechanisms the bridge speaks.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// NewSASL returns a mechanism that logs in as user with the password
// password returns when each connection authenticates, so a rotated
// password file is used from the next connection on.
func NewSASL(mechanism, user string, password func() (string, error)) (sasl.Mechanism, error) {
	switch mechanism {
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
	default:
		return nil, fmt.Errorf("kafkapipe: SASL mechanism %q: want %s, %s or %s", mechanism, SASLPlain, SASLScramSHA256, SASLScramSHA512)
	}
	return fileSASL{name: mechanism, user: user, password: password}, nil
}

type fileSASL struct {
	name, user string
	password   func() (string, error)
}

func (m fileSASL) Name() string { return m.name }

func (m fileSASL) Start(ctx context.Context) (sasl.StateMachine, []byte, error) {
	pw, err := m.password()
	if err != nil {
		return nil, nil, fmt.Errorf("kafkapipe: SASL password: %w", err)
	}
	var inner sasl.Mechanism
	switch m.name {
	case SASLPlain:
		inner = plain.Mechanism{Username: m.user, Password: pw}
	case SASLScramSHA256:
		inner, err = scram.Mechanism(scram.SHA256, m.user, pw)
	default:
		inner, err = scram.Mechanism(scram.SHA512, m.user, pw)
	}
	if err != nil {
		return nil, nil, err
	}
	return inner.Start(ctx)
}
