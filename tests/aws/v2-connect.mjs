// Connections of aws-iot-device-sdk-v2 (aws-crt) with a thing's
// certificate, over MQTT 5 or 3.1.1, as the SDK's samples make them.
import { iot, mqtt, mqtt5 } from "aws-iot-device-sdk-v2";
import { once } from "node:events";
import { env } from "./lib.mjs";

// { protocol, client, stop() }; `protocol` is "mqtt5" or "mqtt311".
export async function connectV2(protocol, thing, dir = env.certs) {
  const cert = `${dir}/${thing}.crt`, key = `${dir}/${thing}.key`;
  const ca = `${env.certs}/ca.crt`;
  if (protocol === "mqtt5") {
    const builder = iot.AwsIotMqtt5ClientConfigBuilder.newDirectMqttBuilderWithMtlsFromPath(
      env.host, cert, key);
    builder.withCertificateAuthorityFromPath(undefined, ca);
    builder.withPort(env.port);
    builder.withConnectProperties({ clientId: thing, keepAliveIntervalSeconds: 60 });
    const client = new mqtt5.Mqtt5Client(builder.build());
    const ok = once(client, "connectionSuccess");
    client.start();
    await ok;
    return {
      protocol, client,
      stop: async () => {
        const stopped = once(client, "stopped");
        client.stop();
        await stopped;
        client.close();
      },
    };
  }
  const config = iot.AwsIotMqttConnectionConfigBuilder.new_mtls_builder_from_path(cert, key)
    .with_certificate_authority_from_path(undefined, ca)
    .with_client_id(thing)
    .with_endpoint(env.host)
    .with_port(env.port)
    .with_clean_session(true)
    .build();
  const client = new mqtt.MqttClient().new_connection(config);
  await client.connect();
  return { protocol, client, stop: () => client.disconnect() };
}

export const rrOptions = {
  maxRequestResponseSubscriptions: 4,
  maxStreamingSubscriptions: 4,
  operationTimeoutInSeconds: 10,
};
