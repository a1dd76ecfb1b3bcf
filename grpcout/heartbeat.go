package grpcout

import "time"

// pacer adapts the ping interval to what the pongs report (seed 000's
// scheme): a slow link or a loaded backend is pinged less often, a healthy
// one more often, always within [MinInterval, MaxInterval]. It is owned by
// the stream's receiving goroutine.
type pacer struct {
	cfg        Heartbeat
	interval   time.Duration
	slow, fast int // consecutive slow / fast pongs
}

func newPacer(cfg Heartbeat, start time.Duration) *pacer {
	return &pacer{cfg: cfg, interval: min(max(start, cfg.MinInterval), cfg.MaxInterval)}
}

// observe takes one pong and returns the interval to use from now on.
func (p *pacer) observe(rtt time.Duration, loadPercent uint32) time.Duration {
	switch {
	case rtt > p.cfg.SlowRTT || loadPercent > 90:
		p.slow, p.fast = p.slow+1, 0
	case rtt < p.cfg.SlowRTT/4 && loadPercent < 50:
		p.slow, p.fast = 0, p.fast+1
	default:
		p.slow, p.fast = 0, 0
	}
	if p.slow >= 3 {
		p.interval, p.slow = min(2*p.interval, p.cfg.MaxInterval), 0
	}
	if p.fast >= 5 {
		p.interval, p.fast = max(p.interval*2/3, p.cfg.MinInterval), 0
	}
	return p.interval
}
