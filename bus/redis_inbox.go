package bus

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
)

// InboxSubscriber implements Bus.
//
// Subscribe creates the reply stream with a first entry ("hello") and a
// TTL, reads it with XREAD from that entry on, and refreshes the TTL while
// subscribed; if the key vanished (Redis restarted empty), it is created
// again. When the subscription ends the key is deleted; if the process
// dies instead, the TTL removes it.
func (r *Redis) InboxSubscriber() (message.Subscriber, error) {
	s := &redisInboxSubscriber{r: r, closing: make(chan struct{})}
	r.track(s)
	return s, nil
}

type redisInboxSubscriber struct {
	r         *Redis
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	mu        sync.Mutex
	readers   []*blockingReader
	cancels   []context.CancelFunc
}

func (s *redisInboxSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if s.r.isClosed() {
		return nil, ErrClosed
	}
	first, err := s.create(ctx, topic)
	if err != nil {
		return nil, err
	}
	reader := s.r.newBlockingReader()
	ctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	s.readers = append(s.readers, reader)
	s.cancels = append(s.cancels, cancel)
	s.mu.Unlock()
	go func() {
		select {
		case <-s.r.done:
		case <-ctx.Done():
		}
		cancel()
	}()
	out := make(chan *message.Message, 256)
	var last atomic.Value // id of the last entry read
	last.Store(first)
	s.wg.Add(2)
	go s.read(ctx, reader, topic, first, out, &last)
	go s.keepAlive(ctx, topic, &last)
	return out, nil
}

func (s *redisInboxSubscriber) create(ctx context.Context, topic string) (string, error) {
	pipe := s.r.rdb.TxPipeline()
	add := pipe.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: []any{"hello", "inbox"}})
	pipe.PExpire(ctx, topic, s.r.cfg.InboxTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		return "", err
	}
	return add.Val(), nil
}

func (s *redisInboxSubscriber) read(ctx context.Context, reader redis.UniversalClient, topic, last string, out chan<- *message.Message, lastRead *atomic.Value) {
	defer s.wg.Done()
	defer close(out)
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		res, err := reader.XRead(ctx, &redis.XReadArgs{
			Streams: []string{topic, last}, Count: s.r.cfg.ReadBatch, Block: s.r.cfg.BlockTime,
		}).Result()
		if err != nil {
			if errors.Is(err, redis.Nil) {
				continue
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			if backoff *= 2; backoff > 2*time.Second {
				backoff = 2 * time.Second
			}
			continue
		}
		backoff = 50 * time.Millisecond
		for _, st := range res {
			for _, x := range st.Messages {
				last = x.ID
				lastRead.Store(last)
				if _, hello := x.Values["hello"]; hello {
					continue
				}
				select {
				case out <- entryMessage(x):
				case <-ctx.Done():
					return
				}
			}
		}
	}
}

// keepAlive refreshes the inbox's TTL, recreates it if it vanished, and
// trims the replies already read (XTRIM MINID), so an inbox holds about
// one entry per call in flight.
func (s *redisInboxSubscriber) keepAlive(ctx context.Context, topic string, lastRead *atomic.Value) {
	defer s.wg.Done()
	defer func() {
		// Our own stream: remove it now rather than at TTL.
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.r.rdb.Del(dctx, topic)
	}()
	// Refresh often enough to notice a lost key within a second or two.
	t := time.NewTicker(min(s.r.cfg.InboxTTL/3, s.r.cfg.InboxRefresh))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			ok, err := s.r.rdb.PExpire(ctx, topic, s.r.cfg.InboxTTL).Result()
			if err == nil && !ok {
				// The key is gone (Redis restarted without it): callers
				// waiting now time out, new ones need the stream back.
				s.create(ctx, topic)
				continue
			}
			s.r.rdb.XTrimMinIDApprox(ctx, topic, nextID(lastRead.Load().(string)), 0)
		case <-ctx.Done():
			return
		}
	}
}

func (s *redisInboxSubscriber) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.mu.Lock()
		cancels, readers := s.cancels, s.readers
		s.mu.Unlock()
		stopReaders(cancels, readers, &s.wg)
		s.r.untrack(s)
	})
	s.wg.Wait()
	return nil
}
