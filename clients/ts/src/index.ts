// @herald/client: Herald's TypeScript SDK. See README.md.

export { createClient, HeraldClient, websocketUrlOf } from "./client.js";
export type {
  CallOptions,
  ClientOptions,
  ConnectionState,
  ConnectionStatus,
  Live,
  LiveOptions,
  PositionedRead,
  ServiceClient,
  TransportMode,
} from "./client.js";
export type { Subscription, SubscribeOptions, SubscriptionState, RecoveryFailed } from "./subscription.js";
export type { Position } from "./cursor.js";
export type { Level, WebSocketConstructor, WebSocketLike } from "./drivers.js";
export { Backoff, type BackoffOptions } from "./backoff.js";
export { classifyCloseCode, classifyErrorCode, classifyConnectError, HeraldError, type Verdict } from "./codes.js";
export { TopicCursor } from "./cursor.js";
export { LiveFeed } from "./livefeed.js";
export { tokenExpiry, refreshDelay } from "./token.js";
export * from "./gen/herald/v1/auth_pb.js";
export * from "./gen/herald/v1/chat_pb.js";
export * from "./gen/herald/v1/chat_events_pb.js";
export * from "./gen/herald/v1/codes_pb.js";
export * from "./gen/herald/v1/deployments_pb.js";
export * from "./gen/herald/v1/deployment_events_pb.js";
export * from "./gen/herald/v1/events_pb.js";
export * from "./gen/herald/v1/notifications_pb.js";
export * from "./gen/herald/v1/notification_events_pb.js";
export * from "./gen/herald/v1/orders_pb.js";
export * from "./gen/herald/v1/orders_events_pb.js";
export * from "./gen/herald/v1/reviews_pb.js";
export * from "./gen/herald/v1/review_events_pb.js";
export * from "./gen/herald/v1/rooms_pb.js";
