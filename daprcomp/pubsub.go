package daprcomp

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	components "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/segmentio/kafka-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgebridge/edgebridge/internal/schedule"
	"github.com/edgebridge/edgebridge/kafkapipe"
	"github.com/edgebridge/edgebridge/mqttin"
	"github.com/edgebridge/edgebridge/transcoder"
)

// Component metadata keys a pubsub Init accepts. Each overrides the
// bridge's configuration for that component instance.
const (
	MetaConsumerID    = "consumerID"    // Kafka consumer group; daprd sets it to the app id
	MetaReplyTopic    = "replyTopic"    // overrides dapr.reply_topic
	MetaMaxInFlight   = "maxInFlight"   // overrides dapr.window
	MetaMaxAttempts   = "maxAttempts"   // overrides dapr.max_attempts
	MetaRetryBackoff  = "retryBackoff"  // overrides dapr.retry_backoff (a Go duration)
	MetaInitialOffset = "initialOffset" // "oldest" (default) or "newest": where a new group starts
)

// daprRuntimeKeys are component metadata daprd itself acts on; they reach
// Init too and are accepted without effect here.
var daprRuntimeKeys = []string{"subscriptionScopes", "publishingScopes", "allowedTopics", "protectedTopics"}

// MetaPartitionKey in publish metadata is the Kafka record key (records
// with the same key keep their order), as in Dapr's Kafka component.
const MetaPartitionKey = "partitionKey"

// Features advertised to daprd.
const featureBulkPublish = "BULK_PUBLISH"

// cloudEventContentType is what daprd publishes (it wraps app data).
const cloudEventContentType = "application/cloudevents+json"

// settings are one pubsub instance's: the server's config with its Init
// metadata applied.
type settings struct {
	consumerID   string
	replyTopic   string
	window       int
	maxAttempts  int
	retryBackoff time.Duration
	startNewest  bool
}

func (s *Server) defaults() settings {
	return settings{
		replyTopic:   s.cfg.ReplyTopic,
		window:       s.cfg.Window,
		maxAttempts:  s.cfg.MaxAttempts,
		retryBackoff: s.cfg.RetryBackoff,
	}
}

// parseSettings applies Init metadata; the error lists every problem.
func (s *Server) parseSettings(props map[string]string) (settings, error) {
	set := s.defaults()
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("metadata %s: %s", key, fmt.Sprintf(format, args...)))
	}
	positive := func(key, v string) int {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65536 {
			bad(key, "%q must be a whole number between 1 and 65536", v)
		}
		return n
	}
	for k, v := range props {
		switch k {
		case MetaConsumerID:
			set.consumerID = strings.TrimSpace(v)
			if set.consumerID != "" && set.consumerID == s.cfg.BackendGroup {
				bad(k, "%q is the gRPC backends' consumer group (kafka.group_id); pick another", v)
			}
		case MetaReplyTopic:
			set.replyTopic = v
			if !kafkapipe.ValidTopic(v) || v == s.cfg.RequestTopic {
				bad(k, "%q is not a valid topic or is the request topic", v)
			}
		case MetaMaxInFlight:
			set.window = positive(k, v)
		case MetaMaxAttempts:
			set.maxAttempts = positive(k, v)
		case MetaRetryBackoff:
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				bad(k, "%q must be a duration like 500ms", v)
			}
			set.retryBackoff = d
		case MetaInitialOffset:
			switch v {
			case "oldest":
			case "newest":
				set.startNewest = true
			default:
				bad(k, "%q must be oldest or newest", v)
			}
		default:
			if !slices.Contains(daprRuntimeKeys, k) {
				bad(k, "unknown key (known: %s, %s, %s, %s, %s, %s)", MetaConsumerID, MetaReplyTopic,
					MetaMaxInFlight, MetaMaxAttempts, MetaRetryBackoff, MetaInitialOffset)
			}
		}
	}
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return set, errors.Join(errs...)
}

// Init keeps the instance's settings for its connection. daprd sets
// consumerID to the app id unless the component sets one.
func (s *Server) Init(ctx context.Context, req *components.PubSubInitRequest) (*components.PubSubInitResponse, error) {
	set, err := s.parseSettings(req.GetMetadata().GetProperties())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "pubsub init: %v", err)
	}
	c := connOf(ctx)
	c.mu.Lock()
	c.pubsub = &set
	c.mu.Unlock()
	s.log.Info("daprcomp: pubsub initialised", "consumer_id", set.consumerID, "reply_topic", set.replyTopic)
	return &components.PubSubInitResponse{}, nil
}

// settingsOf returns the connection's settings, or the defaults (and
// false) before Init.
func (s *Server) settingsOf(ctx context.Context) (settings, bool) {
	c := connOf(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pubsub == nil {
		return s.defaults(), false
	}
	return *c.pubsub, true
}

// Features lists what daprd may rely on.
func (s *Server) Features(context.Context, *components.FeaturesRequest) (*components.FeaturesResponse, error) {
	return &components.FeaturesResponse{Features: []string{featureBulkPublish}}, nil
}

// Ping fails while the pipeline is unhealthy.
func (s *Server) Ping(context.Context, *components.PingRequest) (*components.PingResponse, error) {
	if err := s.ping(); err != nil {
		return nil, err
	}
	return &components.PingResponse{}, nil
}

// Publish writes req.Data to Kafka topic req.Topic and returns once Kafka
// acknowledged it; to the reply topic, it sends the reply to its device
// and returns after the MQTT broker's PUBACK.
func (s *Server) Publish(ctx context.Context, req *components.PublishRequest) (*components.PublishResponse, error) {
	set, _ := s.settingsOf(ctx)
	if req.GetTopic() == set.replyTopic {
		if err := s.reply(ctx, req.GetData()); err != nil {
			return nil, err
		}
		return &components.PublishResponse{}, nil
	}
	rec, err := s.record(req.GetTopic(), req.GetData(), req.GetContentType(), req.GetMetadata())
	if err != nil {
		return nil, err
	}
	if err := s.write(ctx, req.GetTopic(), rec); err != nil {
		return nil, err
	}
	return &components.PublishResponse{}, nil
}

// BulkPublish publishes every entry: the Kafka ones in one write, replies
// one by one. Failed entries are listed with their error.
func (s *Server) BulkPublish(ctx context.Context, req *components.BulkPublishRequest) (*components.BulkPublishResponse, error) {
	set, _ := s.settingsOf(ctx)
	resp := &components.BulkPublishResponse{}
	failed := func(id string, err error) {
		resp.FailedEntries = append(resp.FailedEntries, &components.BulkPublishResponseFailedEntry{EntryId: id, Error: err.Error()})
	}
	if req.GetTopic() == set.replyTopic {
		for _, e := range req.GetEntries() {
			if err := s.reply(ctx, e.GetEvent()); err != nil {
				failed(e.GetEntryId(), err)
			}
		}
		return resp, nil
	}
	var recs []kafkapipe.Record
	var ids []string
	for _, e := range req.GetEntries() {
		md := req.GetMetadata()
		if len(e.GetMetadata()) > 0 {
			md = e.GetMetadata()
		}
		rec, err := s.record(req.GetTopic(), e.GetEvent(), e.GetContentType(), md)
		if err != nil {
			failed(e.GetEntryId(), err)
			continue
		}
		recs = append(recs, rec)
		ids = append(ids, e.GetEntryId())
	}
	if len(recs) > 0 {
		if err := s.write(ctx, req.GetTopic(), recs...); err != nil {
			for _, id := range ids {
				failed(id, err)
			}
		}
	}
	return resp, nil
}

// record builds the Kafka record of a publish to topic.
func (s *Server) record(topic string, data []byte, contentType string, md map[string]string) (kafkapipe.Record, error) {
	if !kafkapipe.ValidTopic(topic) {
		return kafkapipe.Record{}, status.Errorf(codes.InvalidArgument, "topic %q is not a valid Kafka topic name", topic)
	}
	if topic == s.cfg.RequestTopic {
		return kafkapipe.Record{}, status.Errorf(codes.InvalidArgument,
			"topic %q carries device requests and is written by edgebridge only", topic)
	}
	if contentType == "" {
		contentType = cloudEventContentType // daprd wraps app data unless rawPayload
	}
	rec := kafkapipe.Record{Topic: topic, Value: data,
		Headers: []kafka.Header{{Key: kafkapipe.HeaderContentType, Value: []byte(contentType)}}}
	if k := md[MetaPartitionKey]; k != "" {
		rec.Key = []byte(k)
	}
	return rec, nil
}

// publishWait bounds how long a publish retries Kafka's transient errors
// (a topic being created, a leader moving) before it fails Unavailable.
const publishWait = 10 * time.Second

func (s *Server) write(ctx context.Context, topic string, recs ...kafkapipe.Record) error {
	if err := s.ensureTopic(ctx, topic); err != nil {
		return unavailable("create topic %s: %v", topic, err)
	}
	wctx, cancel := context.WithTimeout(ctx, publishWait)
	defer cancel()
	var err error
	schedule.Retry(wctx, func() error {
		if err = s.deps.Kafka.Write(wctx, recs...); err != nil && !kafkapipe.IsRetryable(err) {
			return nil // Kafka refused the records: retrying cannot help
		}
		return err
	}, nil)
	switch {
	case err == nil:
	case !kafkapipe.IsRetryable(err):
		return status.Errorf(codes.InvalidArgument, "write to %s: %v", topic, err)
	default:
		return unavailable("write to %s: %v", topic, err)
	}
	for range recs {
		s.event(EventPublished, topic)
	}
	return nil
}

// ensureTopic creates topic if needed and returns once the producer can
// write to it. Subscribing creates the topic too, so an app that subscribes
// to a new topic and publishes to it at once finds it served.
func (s *Server) ensureTopic(ctx context.Context, topic string) error {
	if _, ok := s.topics.Load(topic); ok {
		return nil
	}
	if err := s.deps.Kafka.EnsureTopics(ctx, s.cfg.Partitions, topic); err != nil {
		return err
	}
	s.topics.Store(topic, true)
	return nil
}

// reply sends an app's reply to its device. data is the CloudEvent daprd
// made of the app's body, or the body itself (rawPayload).
func (s *Server) reply(ctx context.Context, data []byte) error {
	device, payload, err := transcoder.DecodeAppReply(eventData(data))
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "reply: %v", err)
	}
	topic := mqttin.ReplyTopic(s.cfg.DeviceReplyTopic, device)
	if err := s.deps.MQTT.Publish(ctx, topic, payload); err != nil {
		return publishError("reply to "+topic, err)
	}
	s.event(EventReplied, "")
	return nil
}

// eventData returns the data of a CloudEvent, or b itself if b is not one.
func eventData(b []byte) []byte {
	var ce struct {
		SpecVersion string          `json:"specversion"`
		Data        json.RawMessage `json:"data"`
		DataBase64  string          `json:"data_base64"`
	}
	if json.Unmarshal(b, &ce) != nil || ce.SpecVersion == "" {
		return b
	}
	if ce.DataBase64 != "" {
		if d, err := base64.StdEncoding.DecodeString(ce.DataBase64); err == nil {
			return d
		}
		return b
	}
	var text string
	if json.Unmarshal(ce.Data, &text) == nil {
		return []byte(text) // data published as a string holding JSON
	}
	return ce.Data
}

// publishError maps an MQTT publish failure to a gRPC status: a topic no
// broker accepts (mqttin.ErrInvalidTopic) is the caller's mistake, anything
// else is worth a retry.
func publishError(what string, err error) error {
	if errors.Is(err, mqttin.ErrInvalidTopic) {
		return status.Errorf(codes.InvalidArgument, "%.200s: %v", what, err)
	}
	return unavailable("%.200s: %v", what, err)
}

func unavailable(format string, args ...any) error {
	return status.Errorf(codes.Unavailable, format, args...)
}
