// Publishes one send job to wxdispatch and waits for its outcome (the RabbitMQ Java client and
// Jackson, both from Debian: librabbitmq-client-java, libjackson2-databind-java).
//
// What every publisher must do (docs/asyncapi.yaml): persistent delivery, messageId, timestamp,
// contentType, userId, and a publisher confirm before the job counts as handed over. The
// outcome is read from a queue of our own bound to the outcomes exchange, by the job's id (the
// outcome's correlationId), and its required fields and types are checked.
//
// Exit status: 0 when the outcome arrived, is well formed and has the expected status; 1
// otherwise. Settings (environment): AMQP_URL, JOBS_QUEUE, OUTCOMES_EXCHANGE, APPID, TOUSER,
// TEMPLATE_ID, EXPECT_STATUS (default sent), TIMEOUT_SECS (default 30).

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Date;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;

public final class Publish {
    private static final ObjectMapper JSON = new ObjectMapper();

    /** The fields every send outcome has, with the JSON node types each may be. */
    private static final Map<String, Set<String>> REQUIRED = Map.ofEntries(
            Map.entry("kind", Set.of("STRING")),
            Map.entry("id", Set.of("STRING", "NULL")),
            Map.entry("appid", Set.of("STRING", "NULL")),
            Map.entry("touser", Set.of("STRING", "NULL")),
            Map.entry("status", Set.of("STRING")),
            Map.entry("errcode", Set.of("NUMBER", "NULL")),
            Map.entry("errmsg", Set.of("STRING", "NULL")),
            Map.entry("msgid", Set.of("NUMBER", "NULL")),
            Map.entry("msgid_str", Set.of("STRING", "NULL")),
            Map.entry("attempts", Set.of("NUMBER")),
            Map.entry("reason", Set.of("STRING", "NULL")),
            Map.entry("finished_at", Set.of("STRING")));
    private static final Set<String> SEND_STATUSES =
            Set.of("sent", "rejected", "failed", "invalid", "expired");

    private static String env(String key, String def) {
        String v = System.getenv(key);
        return v == null || v.isEmpty() ? def : v;
    }

    private static void fail(String message) {
        System.err.println("java: " + message);
        System.exit(1);
    }

    static List<String> problems(JsonNode o, String jobId) {
        List<String> out = new ArrayList<>();
        REQUIRED.forEach((k, types) -> {
            if (!o.has(k)) {
                out.add("no " + k);
            } else if (!types.contains(o.get(k).getNodeType().name())) {
                out.add(k + " is " + o.get(k).getNodeType());
            }
        });
        if (!out.isEmpty()) {
            return out;
        }
        if (!o.get("kind").asText().equals("send")) out.add("kind " + o.get("kind"));
        if (!o.get("id").asText().equals(jobId)) out.add("id " + o.get("id"));
        if (!SEND_STATUSES.contains(o.get("status").asText())) out.add("status " + o.get("status"));
        if (!o.get("attempts").canConvertToLong() || o.get("attempts").asLong() < 0) out.add("attempts");
        JsonNode msgid = o.get("msgid");
        JsonNode msgidStr = o.get("msgid_str");
        if (msgid.isNull() != msgidStr.isNull()
                || (!msgid.isNull() && !msgid.bigIntegerValue().toString().equals(msgidStr.asText()))) {
            out.add("msgid " + msgid + " and msgid_str " + msgidStr + " disagree");
        }
        if (!o.get("finished_at").asText().matches("\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z")) {
            out.add("finished_at");
        }
        return out;
    }

    public static void main(String[] args) throws Exception {
        String url = env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        String jobsQueue = env("JOBS_QUEUE", "wxdispatch.jobs");
        String exchange = env("OUTCOMES_EXCHANGE", "wxdispatch.outcomes");
        String expect = env("EXPECT_STATUS", "sent");
        long timeoutMs = Long.parseLong(env("TIMEOUT_SECS", "30")) * 1000;
        long deadline = System.currentTimeMillis() + timeoutMs;

        String jobId = "java-" + UUID.randomUUID().toString().substring(0, 18);
        ObjectNode job = JSON.createObjectNode();
        job.put("id", jobId);
        job.put("touser", env("TOUSER", "o-publisher-java"));
        job.put("template_id", env("TEMPLATE_ID", "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY"));
        job.putObject("data").putObject("User").put("value", "Java").put("color", "#173177");
        if (System.getenv("APPID") != null) {
            job.put("appid", System.getenv("APPID"));
        }

        ConnectionFactory factory = new ConnectionFactory();
        factory.setUri(url);
        String userInfo = new URI(url).getRawUserInfo();
        String user = userInfo == null ? "guest"
                : URLDecoder.decode(userInfo.split(":", 2)[0], StandardCharsets.UTF_8);
        try (Connection conn = factory.newConnection()) {
            Channel ch = conn.createChannel();
            // Our own queue, bound before publishing so the outcome cannot be missed; the
            // exchange is the worker's (a passive check says clearly when it is missing).
            ch.exchangeDeclarePassive(exchange);
            String queue = ch.queueDeclare("", false, true, true, null).getQueue();
            ch.queueBind(queue, exchange, "send.*");
            BlockingQueue<String[]> outcomes = new ArrayBlockingQueue<>(16);
            ch.basicConsume(queue, true, (tag, d) -> {
                if (jobId.equals(d.getProperties().getCorrelationId())) {
                    outcomes.offer(new String[] {d.getProperties().getMessageId(),
                        new String(d.getBody(), StandardCharsets.UTF_8)});
                }
            }, tag -> { });

            ch.confirmSelect();
            ch.addReturnListener(r -> fail("job " + jobId + " was not routed to " + jobsQueue));
            AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                    .contentType("application/json")
                    .deliveryMode(2) // persistent
                    .messageId(jobId)
                    .timestamp(new Date())
                    .userId(user)
                    .build();
            ch.basicPublish("", jobsQueue, true, props, JSON.writeValueAsBytes(job));
            if (!ch.waitForConfirms(timeoutMs)) {
                fail("job " + jobId + " was not confirmed");
            }
            System.out.println("java: published " + jobId + " (confirmed)");

            String[] got = outcomes.poll(Math.max(1, deadline - System.currentTimeMillis()),
                    TimeUnit.MILLISECONDS);
            if (got == null) {
                fail("no outcome for " + jobId + " within " + timeoutMs / 1000 + "s");
            }
            JsonNode o = JSON.readTree(got[1]);
            List<String> bad = problems(o, jobId);
            if (!bad.isEmpty()) {
                fail("the outcome is malformed (" + String.join("; ", bad) + "): " + got[1]);
            }
            if (!o.get("status").asText().equals(expect)) {
                fail("expected " + expect + ", got " + got[1]);
            }
            System.out.println("java: outcome " + got[0] + ": " + got[1]);
        }
        System.exit(0);
    }
}
