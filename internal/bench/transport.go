package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fnmesh/fnmesh/bus"
	"github.com/fnmesh/fnmesh/internal/bench/rueproto"
)

// RunTransport measures the call path at the bus, without client and
// handlers, on one of two transports that write the same commands and
// entries, so the figures compare RESP implementations and nothing else:
//
//   - bus-call: bus.Redis, our own RESP and combiner;
//   - rueidis-call: internal/bench/rueproto, the same path on rueidis;
//   - rueidis-flush-call: rueidis-call with a MaxFlushDelay of 20µs,
//     which makes rueidis gather more commands into each write.
//
// Each replica and the caller have a connection of their own, as
// separate processes would; replicas run a pool of Concurrency workers
// and answer with the reply and its XACK in one round trip.
func RunTransport(ctx context.Context, o Options) (Result, error) {
	o.setDefaults()
	if o.RedisURL == "" {
		return Result{}, errors.New("bench: transport modes need a Redis URL")
	}
	service := fmt.Sprintf("benchwire%d", time.Now().UnixNano())
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	var call caller
	var err error
	switch o.Mode {
	case "bus-call":
		call, err = busCaller(runCtx, &wg, o, service)
	case "rueidis-call":
		call, err = rueidisCaller(runCtx, &wg, o, service, 0)
	case "rueidis-flush-call":
		call, err = rueidisCaller(runCtx, &wg, o, service, 20*time.Microsecond)
	default:
		err = fmt.Errorf("bench: unknown transport mode %q (bus-call, rueidis-call, rueidis-flush-call)", o.Mode)
	}
	if err != nil {
		return Result{}, err
	}
	// Until a replica has made the stream, requests are not served.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := call(ctx, args{1, 1}); err == nil {
			break
		} else if time.Now().After(deadline) {
			return Result{}, fmt.Errorf("bench: %s not served in 10s: %w", o.Mode, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return measure(ctx, o, o.Mode, call)
}

// sum is the function both transports serve.
func sum(payload []byte) []byte {
	var a args
	json.Unmarshal(payload, &a)
	b, _ := json.Marshal(result{a.A + a.B})
	return b
}

// busCaller starts o.Replicas replicas and a caller on bus.Redis; each
// stops, and the bus closes, when ctx ends (wg tells when).
func busCaller(ctx context.Context, wg *sync.WaitGroup, o Options, service string) (caller, error) {
	open := func() (*bus.Redis, error) {
		b, err := bus.NewRedis(bus.RedisConfig{URL: o.RedisURL})
		if err == nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-ctx.Done()
				b.Client().Del(context.Background(), bus.RequestTopic(service))
				b.Close()
			}()
		}
		return b, err
	}
	for i := 0; i < o.Replicas; i++ {
		b, err := open()
		if err != nil {
			return nil, err
		}
		replica := "r" + strconv.Itoa(i)
		sub, err := b.GroupSubscriber(bus.GroupConfig{Consumer: replica, Concurrency: 64, SettleDirect: true})
		if err != nil {
			return nil, err
		}
		msgs, err := sub.Subscribe(ctx, bus.RequestTopic(service))
		if err != nil {
			return nil, err
		}
		for range 64 { // handlers.Service's pool of workers
			wg.Add(1)
			go func() {
				defer wg.Done()
				for m := range msgs {
					var req bus.Request
					if bus.DecodeRequestInto(m, &req) != nil {
						bus.Nack(m)
						continue
					}
					rep := &bus.Reply{ID: req.ID, Payload: sum(req.Payload), Replica: replica, Acks: m}
					if b.SendReply(context.WithoutCancel(ctx), req.ReplyTo, rep) != nil {
						bus.Nack(m)
						continue
					}
					bus.Ack(m)
				}
			}()
		}
	}
	cb, err := open()
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	waiting := map[string]chan *bus.Reply{}
	inbox := bus.InboxTopic(cb, "bench"+strconv.FormatInt(time.Now().UnixNano(), 36))
	in, err := cb.OpenInbox(ctx, inbox, func(r *bus.Reply) {
		mu.Lock()
		ch := waiting[r.ID]
		delete(waiting, r.ID)
		mu.Unlock()
		if ch != nil {
			ch <- r
		}
	})
	if err != nil {
		return nil, err
	}
	wg.Add(1)
	go func() { defer wg.Done(); <-ctx.Done(); in.Close() }()
	var seq atomic.Uint64
	return func(ctx context.Context, a args) (result, error) {
		payload, _ := json.Marshal(a)
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		dl, _ := ctx.Deadline()
		ch := make(chan *bus.Reply, 1)
		failed := make(chan error, 1)
		req := &bus.Request{ID: strconv.FormatUint(seq.Add(1), 36), Function: "add", Payload: payload, ReplyTo: inbox,
			Deadline: dl, Failed: func(err error) { failed <- err }} // as client.Call sends
		mu.Lock()
		waiting[req.ID] = ch
		mu.Unlock()
		forget := func() { mu.Lock(); delete(waiting, req.ID); mu.Unlock() }
		if err := cb.SendRequest(ctx, service, req); err != nil {
			forget()
			return result{}, err
		}
		select {
		case rep := <-ch:
			return decodeSum(rep)
		case err := <-failed:
			forget()
			return result{}, err
		case <-ctx.Done():
			forget()
			return result{}, ctx.Err()
		}
	}, nil
}

// rueidisCaller is busCaller on internal/bench/rueproto.
func rueidisCaller(ctx context.Context, wg *sync.WaitGroup, o Options, service string, flushDelay time.Duration) (caller, error) {
	for i := 0; i < o.Replicas; i++ {
		rc, err := rueproto.NewClient(o.RedisURL, flushDelay)
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer rc.Close()
			rueproto.Serve(ctx, rc, service, "r"+strconv.Itoa(i), rueproto.Config{}, func(_ context.Context, r *bus.Request) *bus.Reply {
				return &bus.Reply{Payload: sum(r.Payload)}
			})
			rc.Do(context.Background(), rc.B().Del().Key(bus.RequestTopic(service)).Build())
		}()
	}
	rc, err := rueproto.NewClient(o.RedisURL, flushDelay)
	if err != nil {
		return nil, err
	}
	c, err := rueproto.NewCaller(ctx, rc, bus.ReplyTopic("bench"+strconv.FormatInt(time.Now().UnixNano(), 36)), rueproto.Config{})
	if err != nil {
		rc.Close()
		return nil, err
	}
	wg.Add(1)
	go func() { defer wg.Done(); <-ctx.Done(); c.Close(); rc.Close() }()
	return func(ctx context.Context, a args) (result, error) {
		payload, _ := json.Marshal(a)
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		dl, _ := ctx.Deadline()
		rep, err := c.Call(ctx, service, "add", payload, dl)
		if err != nil {
			return result{}, err
		}
		return decodeSum(rep)
	}, nil
}

func decodeSum(rep *bus.Reply) (result, error) {
	if rep.Err != nil {
		return result{}, rep.Err
	}
	var r result
	return r, json.Unmarshal(rep.Payload, &r)
}
