// Retraining trigger: blob-created events on the training-data container are put on the retraining queue
// (retrain_queue.bicep), which the retraining function (infra/retrain_function/, function_app.bicep) works through
// one message at a time. Event Grid only enqueues: a queue write takes milliseconds, so it never waits ~30 s on a
// submission and redelivers it, as it did when it called the function directly. See infra/README.md.

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region; a storage system topic must live in its storage account\'s region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Name of the storage account whose events are published.')
param storageAccountName string

@description('Container whose new blobs trigger retraining.')
param trainingDataContainerName string

@description('Container that keeps events Event Grid could not deliver.')
param deadLetterContainerName string

@description('Name of the storage account that holds the retraining queue (the function\'s own).')
param queueStorageName string

@description('Name of the retraining queue in that account.')
param queueName string

var retrainSubscriptionName = 'evgs-${baseName}-retrain'
// Built-in role: send messages to a queue, nothing else. The same id in every tenant.
var storageQueueDataMessageSenderRoleId = 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'

resource storageAccount 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

resource queueStorage 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: queueStorageName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2024-01-01' existing = {
  parent: queueStorage
  name: 'default'
}

resource queue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' existing = {
  parent: queueService
  name: queueName
}

// The topic costs nothing without subscriptions, so it is always there to subscribe to.
resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: 'evgt-${baseName}-storage'
  location: location
  tags: tags
  // Its own identity delivers to the queue: the queue's account has shared keys off.
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storageAccount.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// The topic may send to this queue only.
resource topicSendsToQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(queue.id, systemTopic.id, storageQueueDataMessageSenderRoleId)
  scope: queue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataMessageSenderRoleId)
    principalId: systemTopic.identity.principalId
    principalType: 'ServicePrincipal'
    description: '${baseName}: Event Grid enqueues blob-created events for the retraining function'
  }
}

// The queue exists from the first deployment, so the subscription does too: events wait there (up to the message
// time to live) until the function's code is published.
resource retrainSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: systemTopic
  name: retrainSubscriptionName
  dependsOn: [
    topicSendsToQueue
  ]
  properties: {
    deliveryWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      destination: {
        endpointType: 'StorageQueue'
        properties: {
          resourceId: queueStorage.id
          queueName: queue.name
          // A week: longer than any outage of the function worth waiting out; the poison queue keeps failures.
          queueMessageTimeToLiveInSeconds: 604800
        }
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '/blobServices/default/containers/${trainingDataContainerName}/blobs/'
      // Training data is chat JSONL; other files (notes, manifests) do not trigger a run.
      subjectEndsWith: '.jsonl'
      isSubjectCaseSensitive: false
      // Only fully committed blobs: these are the calls that finish a write.
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.api'
          values: [
            'PutBlob'
            'PutBlockList'
            'CopyBlob'
            'FlushWithClose'
          ]
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    // Retries are for the queue write only (seconds); events that still fail are kept, not dropped.
    deadLetterDestination: {
      endpointType: 'StorageBlob'
      properties: {
        resourceId: storageAccount.id
        blobContainerName: deadLetterContainerName
      }
    }
  }
}

output id string = systemTopic.id
output name string = systemTopic.name
output retrainSubscriptionName string = retrainSubscription.name
output principalId string = systemTopic.identity.principalId
