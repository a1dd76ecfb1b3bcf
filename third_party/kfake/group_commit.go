package kfake

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// edgebridge: group commit. With SyncWrites, upstream fsyncs a
// partition's segment and index after every batch, inside the one loop
// that serves every request: a producer writing eight partitions in
// parallel waited for sixteen fsyncs one after the other, and every other
// client waited behind them.
//
// Now a batch's partition is only marked unsynced, and the response of
// every request handled while anything is unsynced is held. When no
// request is waiting in reqCh (or maxHeld are held, or an admin function
// is next), the loop fsyncs every unsynced file at once, in parallel, and
// only then sends the held responses. A produce is still acknowledged
// only once its records are on disk. A failed fsync turns every held produce
// response's partitions into KAFKA_STORAGE_ERROR (retriable: the producer
// sends the records again, and they may then be in the log twice).
//
// Only the segments are fsynced here: an index entry written on the
// produce path holds nothing its batch does not (batchIndexFields), so a
// start after a crash writes the entries the crash lost again from the
// segment (loadSegmentBatches). The index is fsynced when its segment is
// sealed or the broker closes; compaction fsyncs the indexes it writes.
// This halves the fsyncs on the produce path: one is ~0.2 ms of CPU on
// this project's VM.
type groupCommit struct {
	unsynced []*partData
	held     []heldResp
}

type heldResp struct {
	cc   *clientConn
	resp clientResp
}

// maxHeld bounds the responses one flush waits for under a steady stream
// of requests.
const maxHeld = 64

// markUnsynced records that pd's active segment has writes to fsync.
func (c *Cluster) markUnsynced(pd *partData) {
	if pd.unsynced {
		return
	}
	pd.unsynced = true
	c.gc.unsynced = append(c.gc.unsynced, pd)
}

// hold keeps a response until the next flush if anything is unsynced.
func (c *Cluster) hold(creq *clientReq, kresp kmsg.Response, err error) bool {
	if len(c.gc.unsynced) == 0 && len(c.gc.held) == 0 {
		return false
	}
	c.gc.held = append(c.gc.held, heldResp{creq.cc, clientResp{kresp: kresp, corr: creq.corr, err: err}})
	return true
}

// flushDue says whether the loop should flush before it waits: nothing
// more is queued to join this flush, or enough is held.
func (c *Cluster) flushDue() bool {
	if len(c.gc.unsynced) == 0 && len(c.gc.held) == 0 {
		return false
	}
	return len(c.reqCh) == 0 || len(c.gc.held) >= maxHeld
}

// flush fsyncs every unsynced segment in parallel, then sends the held
// responses. It returns false if the cluster died meanwhile.
func (c *Cluster) flush() bool {
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed bool
	)
	syncFile := func(f file) {
		if f == nil {
			return
		}
		wg.Go(func() {
			if err := f.Sync(); err != nil {
				c.cfg.logger.Logf(LogLevelWarn, "group commit fsync: %v", err)
				mu.Lock()
				failed = true
				mu.Unlock()
			}
		})
	}
	for _, pd := range c.gc.unsynced {
		syncFile(pd.activeSegFile)
		pd.unsynced = false
	}
	wg.Wait()
	clear(c.gc.unsynced)
	c.gc.unsynced = c.gc.unsynced[:0]

	held := c.gc.held
	c.gc.held = nil
	for _, h := range held {
		if failed {
			failProduce(h.resp.kresp)
		}
		select {
		case h.cc.respCh <- h.resp:
		case <-h.cc.done:
		case <-c.die:
			return false
		}
	}
	return true
}

// failProduce marks every partition a produce response acknowledged as
// not stored.
func failProduce(kresp kmsg.Response) {
	resp, ok := kresp.(*kmsg.ProduceResponse)
	if !ok {
		return
	}
	for i := range resp.Topics {
		for j := range resp.Topics[i].Partitions {
			p := &resp.Topics[i].Partitions[j]
			if p.ErrorCode == 0 {
				p.ErrorCode = kerr.KafkaStorageError.Code
				p.BaseOffset = -1
			}
		}
	}
}
