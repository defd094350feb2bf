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

	"github.com/redis/go-redis/v9"

	"github.com/fnmesh/fnmesh/bus"
)

// runRaw is the bare Redis Streams loop with no framework, written here so
// that `fnmesh bench` carries its own reference: raw-call is XADD request,
// XREADGROUP COUNT 64, pipelined reply XADD + XACK, one XREAD reply
// reader; raw-send is XADD, XREADGROUP COUNT 64, XACK.
func runRaw(ctx context.Context, o Options) (Result, error) {
	if o.RedisURL == "" {
		return Result{}, errors.New("bench: raw modes need --redis")
	}
	u, err := bus.ParseRedisURL(o.RedisURL)
	if err != nil {
		return Result{}, err
	}
	if u.Topology != bus.Single {
		return Result{}, fmt.Errorf("bench: the bare loop (%s) runs against one server, not a %s", o.Mode, u.Topology)
	}
	opt := u.Single
	opt.PoolSize = 256
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	req := fmt.Sprintf("bench:raw:%d", time.Now().UnixNano())
	reply := req + ":reply"
	defer rdb.Del(context.Background(), req, reply)
	if err := rdb.XGroupCreateMkStream(ctx, req, "g", "$").Err(); err != nil {
		return Result{}, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var processed atomic.Int64
	send := o.Mode == "raw-send"
	for w := 0; w < o.Replicas; w++ {
		go func(w int) {
			for wctx.Err() == nil {
				res, err := rdb.XReadGroup(wctx, &redis.XReadGroupArgs{Group: "g", Consumer: "w" + strconv.Itoa(w), Streams: []string{req, ">"}, Count: 64, Block: time.Second}).Result()
				if err != nil {
					continue
				}
				pipe := rdb.Pipeline()
				ids := make([]string, 0, len(res[0].Messages))
				for _, m := range res[0].Messages {
					ids = append(ids, m.ID)
					if send {
						continue
					}
					var a args
					json.Unmarshal([]byte(m.Values["p"].(string)), &a)
					b, _ := json.Marshal(result{a.A + a.B})
					pipe.XAdd(wctx, &redis.XAddArgs{Stream: reply, MaxLen: 100000, Approx: true, Values: []any{"c", m.Values["c"], "p", b}})
				}
				pipe.XAck(wctx, req, "g", ids...)
				pipe.Exec(wctx)
				processed.Add(int64(len(ids)))
			}
		}(w)
	}
	if send {
		return measureSend(ctx, o, "raw-send", &processed, func(ctx context.Context) error {
			return rdb.XAdd(ctx, &redis.XAddArgs{Stream: req, MaxLen: 1000000, Approx: true, Values: []any{"p", `{"A":1,"B":2}`}}).Err()
		})
	}

	var mu sync.Mutex
	waiting := map[string]chan []byte{}
	go func() {
		last := "$"
		for wctx.Err() == nil {
			res, err := rdb.XRead(wctx, &redis.XReadArgs{Streams: []string{reply, last}, Count: 256, Block: time.Second}).Result()
			if err != nil {
				continue
			}
			for _, m := range res[0].Messages {
				last = m.ID
				mu.Lock()
				ch := waiting[m.Values["c"].(string)]
				mu.Unlock()
				if ch != nil {
					ch <- []byte(m.Values["p"].(string))
				}
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // the reader must be past "$" before the first call
	var seq atomic.Int64
	r, err := measure(ctx, o, "raw-call", func(ctx context.Context, a args) (result, error) {
		id := strconv.FormatInt(seq.Add(1), 10)
		ch := make(chan []byte, 1)
		mu.Lock()
		waiting[id] = ch
		mu.Unlock()
		defer func() { mu.Lock(); delete(waiting, id); mu.Unlock() }()
		b, _ := json.Marshal(a)
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: req, MaxLen: 100000, Approx: true, Values: []any{"c", id, "p", b}}).Err(); err != nil {
			return result{}, err
		}
		select {
		case p := <-ch:
			var r result
			return r, json.Unmarshal(p, &r)
		case <-time.After(5 * time.Second):
			return result{}, errors.New("raw-call: no reply in 5s")
		}
	})
	return r, err
}
