package kafkapipe

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// A consumer that crashed stays in its group until the group's session
// timeout has passed without a heartbeat: its partitions wait that long
// for the next member, and kafka-go has no static membership
// (group.instance.id) to make a restarted consumer its own successor. So a
// consumer with a MemberFile remembers its member id there, and a new one
// removes that member from the group (LeaveGroup, which kafka-go sends to
// the group's coordinator) before it joins: the restarted bridge takes the
// partitions at once.

// leavePredecessor removes the member id the last run wrote to MemberFile
// from the group. A member that already left (a graceful stop, or one the
// coordinator expired) is fine; any other failure is logged and the join
// goes on (it then waits for the session timeout, as without the file).
// Without a MemberFile it does nothing.
func (c *Consumer) leavePredecessor(ctx context.Context) {
	if c.cfg.MemberFile == "" {
		return
	}
	b, err := os.ReadFile(c.cfg.MemberFile)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	id := strings.TrimSpace(string(b))
	if err != nil || id == "" {
		if err != nil {
			c.log.Warn("kafkapipe: cannot read the previous member id", "file", c.cfg.MemberFile, "err", err)
		}
		return
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := c.admin.LeaveGroup(lctx, &kafka.LeaveGroupRequest{GroupID: c.cfg.GroupID,
		Members: []kafka.LeaveGroupRequestMember{{ID: id}}})
	if err == nil {
		err = res.Error
		for _, m := range res.Members {
			err = errors.Join(err, m.Error)
		}
	}
	switch {
	case err == nil:
		c.log.Info("kafkapipe: removed the previous run's group member", "group", c.cfg.GroupID, "member", id)
	case errors.Is(err, kafka.UnknownMemberId):
		// It left or expired already.
	default:
		c.log.Warn("kafkapipe: cannot remove the previous run's group member; its partitions wait for the session timeout",
			"group", c.cfg.GroupID, "member", id, "err", err)
	}
}

// rememberMember writes id to MemberFile (replacing it whole), unless it
// is already there. Without a MemberFile it does nothing.
func (c *Consumer) rememberMember(id string) {
	if c.cfg.MemberFile == "" || id == "" || id == c.member {
		return
	}
	if err := writeFileAtomic(c.cfg.MemberFile, []byte(id+"\n")); err != nil {
		c.log.Warn("kafkapipe: cannot remember the group member id", "file", c.cfg.MemberFile, "err", err)
		return
	}
	c.member = id
}

// writeFileAtomic replaces path with data, durably: a crash leaves the
// old or the new content, never a part, and once it returns the new
// content survives a power loss.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
