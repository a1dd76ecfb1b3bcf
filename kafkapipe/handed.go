package kafkapipe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"sync"

	"github.com/segmentio/kafka-go"

	"github.com/edgebridge/edgebridge/internal/schedule"
)

// A record the consumer hands to its Handler may be handed again: after a
// crash (its offset was not committed) or a rebalance. Message.Redelivered
// tells the two apart for a Handler that must not treat a record as new
// when it may already have acted on it (the bridge's max_request_age: a
// record a backend may have processed must reach it again, whatever its
// age, so the backend's dedup answers it).
//
// Within one run the consumer knows what it handed. Across runs it keeps,
// in HandedFile, an offset per partition below which it may have handed
// records: before it hands a record at or above it, it moves it a stride
// ahead and syncs the file, so the file is written once per handedStride
// records and a record is never handed before the file covers it. After a
// crash, up to a stride of records per partition count as redelivered
// though they were never handed: the safe side.
//
// A run that finds no file (the first, or the first with HandedFile set)
// does not know what an earlier run handed: it counts every record below a
// partition's end offset as redelivered, asked of the brokers when it is
// assigned the partition (or, if that failed, when it hands a record of
// it).

// handedStride is how far ahead of the record being handed the file's
// offset is moved.
const handedStride = 4096

// handedFile is HandedFile's content.
type handedFile struct {
	Topic string `json:"topic"`
	// Below maps a partition (decimal) to the offset below which records
	// may have been handed.
	Below map[string]int64 `json:"handed_below"`
}

// handedMarks is the consumer's record of what it handed. Safe for
// concurrent use by the partitions' fetchers.
type handedMarks struct {
	path, topic string
	log         *slog.Logger
	// endOffset returns a partition's end offset (the next to be written).
	endOffset func(ctx context.Context, part int32) (int64, error)

	mu sync.Mutex
	// known is whether the file was there (for this topic) at the start.
	known bool
	// before holds, per partition, the offset below which an earlier run
	// may have handed records: from the file, or the end offset when there
	// was none. A partition not in it has not been looked at yet.
	before map[int32]int64
	// handed is, per partition, the highest offset this run handed plus one.
	handed map[int32]int64
	// saved is what the file says.
	saved map[int32]int64
}

// openHandedMarks reads path; a missing file, or one for another topic, is
// a start with no history. A file that cannot be read or parsed is an
// error: the consumer would not know what it handed. With no path, only
// this run's records are known (as if no earlier run handed any).
func openHandedMarks(path, topic string, log *slog.Logger, endOffset func(context.Context, int32) (int64, error)) (*handedMarks, error) {
	h := &handedMarks{path: path, topic: topic, log: log, endOffset: endOffset,
		before: map[int32]int64{}, handed: map[int32]int64{}, saved: map[int32]int64{}}
	if path == "" {
		h.known = true
		return h, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kafkapipe: handed file: %w", err)
	}
	var f handedFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("kafkapipe: handed file %s: %w", path, err)
	}
	if f.Topic != topic {
		log.Warn("kafkapipe: the handed file is for another topic; starting without its history", "file", path, "topic", f.Topic, "want", topic)
		return h, nil
	}
	h.known = true
	for p, off := range f.Below {
		n, err := strconv.ParseInt(p, 10, 32)
		if err != nil || off < 0 {
			return nil, fmt.Errorf("kafkapipe: handed file %s: partition %q offset %d", path, p, off)
		}
		h.before[int32(n)], h.saved[int32(n)] = off, off
	}
	return h, nil
}

// start is called when the consumer is assigned part, before it fetches:
// without a file it learns the partition's end offset, if it does not know
// it yet.
func (h *handedMarks) start(ctx context.Context, part int32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.beforeLocked(ctx, part)
}

// beforeLocked returns the offset below which an earlier run may have
// handed records of part; MaxInt64 (every record) while it cannot tell.
func (h *handedMarks) beforeLocked(ctx context.Context, part int32) int64 {
	if before, ok := h.before[part]; ok {
		return before
	}
	if h.known {
		h.before[part] = 0 // the file has no such partition: nothing was handed
		return 0
	}
	before, err := h.endOffset(ctx, part)
	if err != nil {
		h.log.Warn("kafkapipe: no end offset to tell redelivered records from new ones; counting them as redelivered",
			"partition", part, "err", err)
		return math.MaxInt64
	}
	h.before[part] = before
	return before
}

// hand records that the consumer is about to hand the record at off of
// part to its Handler, and reports whether it may have been handed before.
// It blocks while the file cannot be written (retrying; a full disk holds
// the partition back) and returns an error only when ctx ends.
func (h *handedMarks) hand(ctx context.Context, part int32, off int64) (redelivered bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	redelivered = off < h.beforeLocked(ctx, part) || off < h.handed[part]
	h.handed[part] = max(h.handed[part], off+1)
	if h.path == "" || off < h.saved[part] {
		return redelivered, nil
	}
	next := off + handedStride
	if !schedule.RetryLogged(ctx, h.log, "kafkapipe: write the handed file", func() error { return h.save(part, next) }, "file", h.path) {
		return redelivered, ctx.Err()
	}
	return redelivered, nil
}

// save writes the file with part's offset at next.
func (h *handedMarks) save(part int32, next int64) error {
	f := handedFile{Topic: h.topic, Below: make(map[string]int64, len(h.saved)+1)}
	for p, off := range h.saved {
		f.Below[strconv.Itoa(int(p))] = off
	}
	f.Below[strconv.Itoa(int(part))] = next
	raw, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(h.path, raw); err != nil {
		return err
	}
	h.saved[part] = next
	return nil
}

// endOffset asks the brokers for part's end offset.
func (c *Consumer) endOffset(ctx context.Context, part int32) (int64, error) {
	c.adminMu.RLock()
	defer c.adminMu.RUnlock()
	if c.adminClosed {
		return 0, errors.New("kafkapipe: consumer stopped")
	}
	res, err := c.admin.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
		c.cfg.Topic: {kafka.LastOffsetOf(int(part))}}})
	if err != nil {
		return 0, fmt.Errorf("kafkapipe: list offsets: %w", err)
	}
	for _, po := range res.Topics[c.cfg.Topic] {
		if po.Partition == int(part) {
			return po.LastOffset, po.Error
		}
	}
	return 0, fmt.Errorf("kafkapipe: no end offset of partition %d", part)
}
