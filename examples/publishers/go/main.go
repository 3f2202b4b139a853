// Publishes one send job to wxdispatch and waits for its outcome (amqp091-go).
//
// What every publisher must do (docs/asyncapi.yaml): persistent delivery, MessageId,
// Timestamp, ContentType, UserId, and a publisher confirm before the job counts as handed
// over. The outcome is read from a queue of our own bound to the outcomes exchange, by the
// job's id (the outcome's CorrelationId), and its required fields and types are checked.
//
// Exit status: 0 when the outcome arrived, is well formed and has the expected status; 1
// otherwise. Settings (environment): AMQP_URL, JOBS_QUEUE, OUTCOMES_EXCHANGE, APPID, TOUSER,
// TEMPLATE_ID, EXPECT_STATUS (default sent), TIMEOUT_SECS (default 30).
//
// Builds offline with Debian's Go and golang-github-rabbitmq-amqp091-go-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o publisher .
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go: "+format+"\n", args...)
	os.Exit(1)
}

// sendOutcome is a send outcome (docs/schema/outcome.schema.json). Pointers are the fields
// that may be null; json.Number keeps a 19-digit msgid exact.
type sendOutcome struct {
	Kind       *string      `json:"kind"`
	ID         *string      `json:"id"`
	Appid      *string      `json:"appid"`
	Touser     *string      `json:"touser"`
	Status     *string      `json:"status"`
	Errcode    *json.Number `json:"errcode"`
	Errmsg     *string      `json:"errmsg"`
	Msgid      *json.Number `json:"msgid"`
	MsgidStr   *string      `json:"msgid_str"`
	Attempts   *json.Number `json:"attempts"`
	Reason     *string      `json:"reason"`
	FinishedAt *string      `json:"finished_at"`
}

var required = []string{"kind", "id", "appid", "touser", "status", "errcode", "errmsg",
	"msgid", "msgid_str", "attempts", "reason", "finished_at"}

var finishedAt = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$`)

// check returns what is wrong with an outcome body, or nil.
func check(body []byte, jobID string) (*sendOutcome, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, err
	}
	for _, k := range required {
		if _, ok := fields[k]; !ok {
			return nil, fmt.Errorf("no %s", k)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var o sendOutcome
	if err := dec.Decode(&o); err != nil {
		return nil, fmt.Errorf("a field has the wrong type: %v", err)
	}
	switch {
	case o.Kind == nil || *o.Kind != "send":
		return nil, fmt.Errorf("kind is not send")
	case o.ID == nil || *o.ID != jobID:
		return nil, fmt.Errorf("id is not %s", jobID)
	case o.Status == nil:
		return nil, fmt.Errorf("status is null")
	case o.Attempts == nil:
		return nil, fmt.Errorf("attempts is null")
	case o.FinishedAt == nil || !finishedAt.MatchString(*o.FinishedAt):
		return nil, fmt.Errorf("finished_at is not RFC 3339 UTC with milliseconds")
	case (o.Msgid == nil) != (o.MsgidStr == nil):
		return nil, fmt.Errorf("msgid and msgid_str disagree")
	case o.Msgid != nil && o.Msgid.String() != *o.MsgidStr:
		return nil, fmt.Errorf("msgid %s but msgid_str %s", o.Msgid, *o.MsgidStr)
	}
	if n, err := strconv.ParseInt(o.Attempts.String(), 10, 64); err != nil || n < 0 {
		return nil, fmt.Errorf("attempts %s", o.Attempts)
	}
	switch *o.Status {
	case "sent", "rejected", "failed", "invalid", "expired":
	default:
		return nil, fmt.Errorf("status %s", *o.Status)
	}
	return &o, nil
}

func main() {
	rawURL := env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
	jobsQueue := env("JOBS_QUEUE", "wxdispatch.jobs")
	exchange := env("OUTCOMES_EXCHANGE", "wxdispatch.outcomes")
	expect := env("EXPECT_STATUS", "sent")
	secs, _ := strconv.Atoi(env("TIMEOUT_SECS", "30"))

	var b [8]byte
	rand.Read(b[:])
	jobID := "go-" + hex.EncodeToString(b[:])
	job := map[string]interface{}{
		"id":          jobID,
		"touser":      env("TOUSER", "o-publisher-go"),
		"template_id": env("TEMPLATE_ID", "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY"),
		"data":        map[string]interface{}{"User": map[string]string{"value": "Go", "color": "#173177"}},
	}
	if a := os.Getenv("APPID"); a != "" {
		job["appid"] = a
	}
	body, _ := json.Marshal(job)

	user := "guest"
	if u, err := url.Parse(rawURL); err == nil && u.User != nil {
		user = u.User.Username()
	}
	conn, err := amqp.Dial(rawURL)
	if err != nil {
		fail("connect: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		fail("channel: %v", err)
	}
	// Our own queue, bound before publishing so the outcome cannot be missed; the exchange is
	// the worker's (a passive check says clearly when it is missing).
	if err := ch.ExchangeDeclarePassive(exchange, "topic", true, false, false, false, nil); err != nil {
		fail("the outcomes exchange %s: %v", exchange, err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		fail("queue: %v", err)
	}
	if err := ch.QueueBind(q.Name, "send.*", exchange, false, nil); err != nil {
		fail("bind: %v", err)
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		fail("consume: %v", err)
	}

	if err := ch.Confirm(false); err != nil {
		fail("confirm mode: %v", err)
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 1))
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	err = ch.Publish("", jobsQueue, true, false, amqp.Publishing{
		ContentType:  "application/json",
		DeliveryMode: amqp.Persistent,
		MessageId:    jobID,
		Timestamp:    time.Now(),
		UserId:       user,
		Body:         body,
	})
	if err != nil {
		fail("publish: %v", err)
	}
	timeout := time.After(time.Duration(secs) * time.Second)
	select {
	case r := <-returns:
		fail("job %s was not routed to %s: %s", jobID, jobsQueue, r.ReplyText)
	case c := <-confirms:
		if !c.Ack {
			fail("job %s was not confirmed", jobID)
		}
	case <-timeout:
		fail("no confirm for %s", jobID)
	}
	fmt.Printf("go: published %s (confirmed)\n", jobID)

	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				fail("the channel closed before the outcome came")
			}
			if d.CorrelationId != jobID {
				continue
			}
			o, err := check(d.Body, jobID)
			if err != nil {
				fail("the outcome is malformed (%v): %s", err, d.Body)
			}
			if *o.Status != expect {
				fail("expected %s, got %s", expect, d.Body)
			}
			fmt.Printf("go: outcome %s: %s\n", d.MessageId, d.Body)
			return
		case <-timeout:
			fail("no outcome for %s within %ds", jobID, secs)
		}
	}
}
