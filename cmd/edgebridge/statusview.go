package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgebridge/edgebridge/bridge"
)

// writeStatus renders a bridge's /status for a terminal (edgebridge
// status). With prev, an earlier snapshot of the same bridge, it also
// shows rates over the time between them.
func writeStatus(w io.Writer, s bridge.Status, prev *bridge.Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := "READY"
	if !s.Ready {
		state = "NOT READY: " + strings.Join(s.NotReady, "; ")
	}
	build := "edgebridge " + s.Version
	if s.Revision != "" {
		build += " (" + s.Revision[:min(12, len(s.Revision))] + ")"
	}
	fmt.Fprintf(tw, "%s\t%s\t%s\n\n", build, s.Time.Format(time.DateTime), state)
	for _, b := range []struct {
		name string
		b    bridge.Broker
	}{{"MQTT", s.MQTT}, {"Kafka", s.Kafka}} {
		conn := "connected"
		if !b.b.Connected {
			conn = "DOWN " + b.b.Problem + ": " + b.b.Detail
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", b.name, b.b.Address, conn)
	}
	fmt.Fprintln(tw)
	if len(s.Backends) > 0 {
		fmt.Fprintln(tw, "BACKEND\tSTATE\tUP FOR\tCREDITS\tIN FLIGHT\tRTT\tLOAD\tQUEUED\tPARTITIONS")
		for _, b := range s.Backends {
			if !b.Up {
				fmt.Fprintf(tw, "%s\tDOWN %s\t\t\t\t\t\t%d\t%d\t%s\n", b.Addr, b.Reason, b.Queued, b.Partitions, b.Error)
				continue
			}
			upFor := ""
			if b.UpSince != nil {
				upFor = s.Time.Sub(*b.UpSince).Round(time.Second).String()
			}
			fmt.Fprintf(tw, "%s\tup\t%s\t%d\t%d\t%.1fms\t%d%%\t%d\t%d\n", b.Addr, upFor, b.Credits, b.InFlight, b.RTTMillis, b.Load, b.Queued, b.Partitions)
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintf(tw, "WINDOW\t%d / %d in flight\n", s.Window.InFlight, s.Window.Capacity)
	if s.Lag != nil {
		parts := slices.SortedFunc(maps.Keys(s.Lag), func(a, b string) int {
			x, _ := strconv.Atoi(a)
			y, _ := strconv.Atoi(b)
			return x - y
		})
		var total int64
		var each []string
		for _, p := range parts {
			total += s.Lag[p]
			each = append(each, fmt.Sprintf("p%s=%d", p, s.Lag[p]))
		}
		fmt.Fprintf(tw, "LAG\t%d\t%s\n", total, strings.Join(each, " "))
	}
	c := s.Counters
	if prev != nil && s.Time.After(prev.Time) {
		sec := s.Time.Sub(prev.Time).Seconds()
		p := prev.Counters
		rate := func(now, before int64) string { return fmt.Sprintf("%.1f/s", float64(now-before)/sec) }
		fmt.Fprintf(tw, "RATES\treceived %s\tproduced %s\treplies %s\tdead-lettered %s\n",
			rate(c.Received, p.Received), rate(c.Produced, p.Produced), rate(c.Replies, p.Replies), rate(c.DeadLettered, p.DeadLettered))
	}
	fmt.Fprintf(tw, "TOTALS\treceived %d\tproduced %d\treplies %d\tcommits %d\tdead-lettered %d\n",
		c.Received, c.Produced, c.Replies, c.Commits, c.DeadLettered)
	if len(s.DeadLetters) > 0 {
		var dl []string
		for _, r := range slices.Sorted(maps.Keys(s.DeadLetters)) {
			dl = append(dl, fmt.Sprintf("%s %d", r, s.DeadLetters[r]))
		}
		fmt.Fprintf(tw, "DLQ\t%s\n", strings.Join(dl, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.RecentErrors) > 0 {
		fmt.Fprintln(w, "\nRECENT WARNINGS AND ERRORS")
		for _, e := range s.RecentErrors {
			fmt.Fprintf(w, "  %s %-5s %s %s\n", e.Time.Format(time.TimeOnly), e.Level, e.Message, e.Attrs)
		}
	}
	return nil
}
